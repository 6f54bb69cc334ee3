"""Debian's Firefox ESR under Playwright: what the `firefox` fixture launches as the browser executable.

    python tests/firefox_bidi.py /usr/bin/firefox-esr <the arguments Playwright gives>

Playwright (1.65) drives a stock Firefox over WebDriver BiDi (channel "moz-firefox"), and every browser context it
creates starts with `emulation.setMediaFeaturesOverride` (its `prefers-color-scheme` emulation). That command is newer
than Firefox 153 ESR, which answers "unknown command", so `new_context()` fails. This runs the real Firefox with
Playwright's arguments and relays its BiDi WebSocket frame for frame (the handshake's Host names Firefox's port), with
one exception: when Firefox answers that one command with "unknown command" and the command asks for no more than the
light colour scheme (or no override), the answer becomes a success, because the `firefox` fixture pins light with a
Firefox pref (`layout.css.prefers-color-scheme.content-override`). Any other media feature stays Firefox's error, and
once Firefox knows the command its answers pass through unchanged. Pages, scripts, input and events are Firefox's own.

Standard library only. Firefox's BiDi server negotiates no WebSocket extension, so frames are plain.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys

UNSUPPORTED = b"emulation.setMediaFeaturesOverride"
# What a light-only profile can truthfully acknowledge: prefers-color-scheme light, or no override (the profile's).
ACKNOWLEDGED = {"prefers-color-scheme": (None, "light")}
LISTENING = re.compile(rb"WebDriver BiDi listening on ws://([^:/\s]+):(\d+)")


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes, bytes]:
    """One WebSocket frame: (fin, opcode, unmasked payload, the frame's bytes as received)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    extended = b""
    if length == 126:
        extended = await reader.readexactly(2)
    elif length == 127:
        extended = await reader.readexactly(8)
    if extended:
        length = int.from_bytes(extended, "big")
    mask = await reader.readexactly(4) if head[1] & 0x80 else b""
    payload = await reader.readexactly(length)
    raw = head + extended + mask + payload
    if mask:
        key = (mask * (length // 4 + 1))[:length]
        payload = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")
    return bool(head[0] & 0x80), head[0] & 0x0F, payload, raw


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (server to client)."""
    n = len(payload)
    if n < 126:
        size = bytes([n])
    elif n < 1 << 16:
        size = bytes([126]) + n.to_bytes(2, "big")
    else:
        size = bytes([127]) + n.to_bytes(8, "big")
    return bytes([0x81]) + size + payload


class Connection:
    """One client connection relayed to Firefox."""

    def __init__(self) -> None:
        self.asked: dict[int, dict] = {}  # id -> params of the client's pending setMediaFeaturesOverride commands

    async def client_to_firefox(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        message: list[bytes] = []
        while True:
            fin, opcode, payload, raw = await read_frame(reader)
            writer.write(raw)  # unchanged
            if opcode >= 8:  # control frames may come between fragments
                if opcode == 8:
                    await writer.drain()
                    return
                continue
            message.append(payload)
            if fin:
                data = b"".join(message)
                message.clear()
                if UNSUPPORTED in data:
                    command = json.loads(data)
                    if command.get("method") == UNSUPPORTED.decode():
                        self.asked[command["id"]] = command.get("params") or {}
            await writer.drain()

    async def firefox_to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames: list[bytes] = []
        message: list[bytes] = []
        while True:
            fin, opcode, payload, raw = await read_frame(reader)
            if opcode >= 8:
                writer.write(raw)
                await writer.drain()
                if opcode == 8:
                    return
                continue
            frames.append(raw)
            message.append(payload)
            if not fin:
                continue
            data = b"".join(message)
            out = b"".join(frames)
            frames.clear()
            message.clear()
            if self.asked and b"unknown command" in data:
                answer = json.loads(data)
                params = self.asked.pop(answer.get("id"), None)
                if params is not None and answer.get("error") == "unknown command":
                    out = text_frame(json.dumps(self.answer(answer, params)).encode())
            elif self.asked and b'"id"' in data:
                self.asked.pop(json.loads(data).get("id"), None)  # Firefox answered it itself
            writer.write(out)
            await writer.drain()

    @staticmethod
    def answer(error: dict, params: dict) -> dict:
        features = params.get("features") or {}
        if all(value in ACKNOWLEDGED.get(name, ()) for name, value in features.items()):
            return {"type": "success", "id": error["id"], "result": {}}
        error["message"] = (f"{error.get('message', '')}: this Firefox ESR cannot emulate media features; only "
                            f"prefers-color-scheme light (which the profile pins) or no override is acknowledged, "
                            f"not {json.dumps(features)}")
        return error


async def relay(firefox: asyncio.Future, client_reader: asyncio.StreamReader,
                client_writer: asyncio.StreamWriter) -> None:
    host, port = await firefox
    firefox_reader, firefox_writer = await asyncio.open_connection(host, port)
    try:
        request = await client_reader.readuntil(b"\r\n\r\n")
        # No extensions (Firefox offers none anyway), so the frames stay readable; and Firefox's own address as the
        # Host, which it checks against the port it listens on.
        request = re.sub(rb"(?im)^sec-websocket-extensions:.*\r\n", b"", request)
        request = re.sub(rb"(?im)^host:.*\r\n", f"Host: {host}:{port}\r\n".encode(), request)
        firefox_writer.write(request)
        client_writer.write(await firefox_reader.readuntil(b"\r\n\r\n"))
        connection = Connection()
        pumps = [asyncio.ensure_future(connection.client_to_firefox(client_reader, firefox_writer)),
                 asyncio.ensure_future(connection.firefox_to_client(firefox_reader, client_writer))]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        for writer in (firefox_writer, client_writer):
            writer.close()


async def main(executable: str, args: list[str]) -> int:
    process = await asyncio.create_subprocess_exec(executable, *args, stderr=asyncio.subprocess.PIPE, limit=1 << 20)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, process.send_signal, sig)
    firefox: asyncio.Future = loop.create_future()
    server = await asyncio.start_server(lambda r, w: relay(firefox, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    err = sys.stderr.buffer
    async with server:
        # Firefox's log goes on to Playwright; the line it waits for names the relay instead of Firefox.
        while line := await process.stderr.readline():
            found = LISTENING.search(line)
            if found and not firefox.done():
                firefox.set_result((found[1].decode(), int(found[2])))
                line = line[:found.start()] + f"WebDriver BiDi listening on ws://127.0.0.1:{port}".encode() + \
                    line[found.end():]
            err.write(line)
            err.flush()
        return await process.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2:])))
