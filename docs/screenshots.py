"""Regenerate the README's two screenshots, docs/images/console.png and docs/images/chat.png, from the real thing.

    .venv/bin/python -m docs.screenshots

It starts `baton dev` (a temporary home, free ports, no Temporal Web UI), creates a live agent, plays one
conversation through the demo chat page and the agent console in headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright; nothing is downloaded), with two more conversations waiting and one offered to the agent by
the push queue `orders`, and takes both pictures at the moment a person would want to see. All data is made up
("Ada", order BT-4417, 12 Example Street). Everything it starts is stopped when it ends, also on an error.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.async_api import Page, async_playwright, expect

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
BATON = Path(sys.executable).parent / "baton"
CHROMIUM = Path("/usr/bin/chromium")

CONSOLE_SIZE = {"width": 1280, "height": 800}
CHAT_SIZE = {"width": 900, "height": 780}
# Temporal on a small machine: a reply can take a few seconds to come round.
WAIT_MS = 60_000
BANNER_WITHIN = 180

AGENT = {"agent_id": "Sam", "name": "Sam Rivera", "queues": ["general", "orders"]}
# What the chat backend knows of Ada: the agent sees the profile, slots and metadata, never `auth` or
# `internal_notes` (the console lists them as withheld, with the reason).
ADA_CONTEXT = {
    "profile": {"name": "Ada", "language": "en", "customer_since": "2021"},
    "slots": {"order_number": "BT-4417", "item": "floor lamp"},
    "metadata": {"channel": "web chat"},
    "auth": {"session": "demo-session-not-a-real-secret"},
    "internal_notes": "goodwill voucher issued in March",
}
# Two more conversations waiting in the same queue, asked for by the chat backend with a reason of its own.
OTHERS = [
    ("web-5521", "Hello, can I still change where my lamp is sent? It has left the warehouse.",
     "address change after dispatch"),
    ("app-3308", "My kettle stopped heating after two weeks, I have photos of the label.",
     "warranty claim, customer has photos"),
]
# How long the others have waited when the pictures are taken (a list where everyone waited 0:01 looks staged).
OTHERS_WAITED = 50
OTHERS_APART = 12

# Asked about an order (the demo config's `orders` queue assigns by push): offered to Sam, who works it.
OFFERED = ("web-7710", "Where is my parcel? It should have arrived on Monday.")
# Written by the user of web-5521 while the agent looks at the list: the console shows it as "Latest".
LATEST = ("web-5521", "It should go to my office instead: 12 Example Street.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BatonDev:
    """`baton dev` in its own process group, run from the checkout as a person does (so it routes by
    config/baton.yaml)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.out = home.parent / "baton.out"
        self.api_port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "TEMPORAL_"))}
        with open(self.out, "ab") as out:
            self.process = subprocess.Popen(
                [str(BATON), "dev", "--home", str(self.home), "--temporal-port", str(free_port()), "--no-ui",
                 "--api-port", str(self.api_port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            )
        deadline = time.monotonic() + BANNER_WITHIN
        while "Baton is running" not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"baton dev exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"baton dev printed no banner in {BANNER_WITHIN} s:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def keys(self) -> dict[str, str]:
        lines = (self.home / "keys.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))

    def stop(self) -> None:
        """Ctrl-C, as a person stops it; then, if anything of its process group is left, kill that group."""
        if self.process is None:
            return
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own group (start_new_session): only what it started
            except ProcessLookupError:
                pass
            self.process.wait(10)


async def tidy(page: Page) -> None:
    """No text cursor, focus ring or hover effect in the picture."""
    await page.evaluate("() => document.activeElement && document.activeElement.blur()")
    await page.mouse.move(0, 0)


async def shoot(dev: BatonDev) -> None:
    keys = dev.keys()
    backend = httpx.AsyncClient(base_url=dev.api, timeout=30,
                                headers={"Authorization": f"Bearer {keys['BATON_API_KEY']}"})
    async with backend, async_playwright() as playwright:
        r = await backend.post("/v1/admin/live-agents", json=AGENT,
                               headers={"Authorization": f"Bearer {keys['BATON_ADMIN_KEY']}"})
        r.raise_for_status()
        token = r.json()["token"]

        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            common = {"base_url": dev.api, "locale": "en-GB", "timezone_id": "Europe/London", "color_scheme": "light"}
            console = await (await browser.new_context(viewport=CONSOLE_SIZE, **common)).new_page()
            chat = await (await browser.new_context(viewport=CHAT_SIZE, **common)).new_page()
            expect.set_options(timeout=WAIT_MS)

            # The agent signs in.
            await console.goto("/console")
            await console.get_by_role("textbox", name="Agent token").fill(token)
            await console.get_by_role("button", name="Sign in", exact=True).click()
            await expect(console.get_by_role("status").filter(has_text="Live")).to_be_visible()
            waiting = console.get_by_role("region", name="Queue general").get_by_role("list", name="Waiting")

            # Ada opens the chat; her chat backend knows who she is.
            await chat.goto("/chat")
            await chat.wait_for_function("() => sessionStorage.getItem('baton.demo.session') !== null")
            ada = (await chat.evaluate("JSON.parse(sessionStorage.getItem('baton.demo.session'))"))["conversation_id"]
            (await backend.put(f"/v1/conversations/{ada}/context", json=ADA_CONTEXT)).raise_for_status()
            chat_log = chat.get_by_role("log", name="Conversation")

            async def say(text: str) -> None:
                await chat.get_by_role("textbox", name="Message").fill(text)
                await chat.get_by_role("button", name="Send", exact=True).click()
                await expect(chat_log.locator("li[data-seq]").filter(has_text=text)).to_have_count(1)

            await say("My lamp arrived with a cracked shade. Can I talk to a person, please?")
            await expect(chat_log.get_by_role("listitem").filter(has_text="number 1 in the queue")).to_be_visible()
            await expect(waiting.get_by_role("listitem").filter(has_text=ada)).to_be_visible()

            # Two more people wait behind her.
            since = time.monotonic()
            for conversation, text, reason in OTHERS:
                r = await backend.post(f"/v1/conversations/{conversation}/messages",
                                       json={"message_id": f"{conversation}-1", "text": text})
                r.raise_for_status()
                r = await backend.post(f"/v1/conversations/{conversation}/handoff", json={"reason": reason})
                r.raise_for_status()
                await expect(waiting.get_by_role("listitem").filter(has_text=conversation)).to_be_visible()
                await asyncio.sleep(OTHERS_APART)

            # Ada adds a detail while she waits; the agent will see it in the transcript.
            await say("It's the large floor lamp. The box looked fine from the outside.")

            # Sam claims her conversation.
            item = waiting.get_by_role("listitem").filter(has_text=ada)
            await item.get_by_role("button", name="Claim", exact=True).click()
            panel = console.get_by_role("tabpanel")
            await expect(panel.get_by_role("region", name="Context")).to_contain_text("BT-4417")
            await expect(chat_log.get_by_role("listitem").filter(has_text="Sam has joined")).to_be_visible()
            console_log = panel.get_by_role("log", name="Conversation")

            async def reply(text: str) -> None:
                await console.get_by_role("textbox", name="Reply").fill(text)
                await console.get_by_role("button", name="Send", exact=True).click()
                await expect(chat_log.locator("li[data-seq]").filter(has_text=text)).to_have_count(1)
                await expect(console_log.locator("li[data-seq]").filter(has_text=text)).to_have_count(1)

            await reply("Hi Ada, I'm Sam. Sorry about the shade! I can see order BT-4417 here.")
            await say("Could you send a new shade? I'd like to keep the lamp.")
            await expect(console_log.locator("li[data-seq]").filter(has_text="keep the lamp")).to_have_count(1)
            await reply("Of course. A replacement shade ships tomorrow; no need to send the cracked one back.")

            # Meanwhile someone else in the queue writes again.
            await asyncio.sleep(max(0.0, since + OTHERS_WAITED - time.monotonic()))
            conversation, text = LATEST
            r = await backend.post(f"/v1/conversations/{conversation}/messages",
                                   json={"message_id": f"{conversation}-2", "text": text})
            r.raise_for_status()
            await expect(waiting.get_by_role("listitem").filter(has_text=conversation)).to_contain_text("Latest")
            await expect(chat.get_by_role("status")).to_contain_text("Sam is with you")

            # A question about an order: the `orders` queue offers it to Sam, with the seconds left to accept.
            conversation, text = OFFERED
            r = await backend.post(f"/v1/conversations/{conversation}/messages",
                                   json={"message_id": f"{conversation}-1", "text": text})
            r.raise_for_status()
            offers = console.get_by_role("list", name="Offers")
            await expect(offers.get_by_role("listitem").filter(has_text=conversation)).to_be_visible()

            IMAGES.mkdir(parents=True, exist_ok=True)
            for page, name in ((console, "console.png"), (chat, "chat.png")):
                await tidy(page)
                await page.screenshot(path=IMAGES / name)
                print(f"wrote {IMAGES / name} ({(IMAGES / name).stat().st_size // 1024} KB)")
        finally:
            await browser.close()


def main() -> None:
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium (Playwright downloads no browser here)")
    with tempfile.TemporaryDirectory(prefix="baton-screenshots-") as tmp:
        dev = BatonDev(Path(tmp) / "baton-home")
        try:
            dev.start()
            asyncio.run(shoot(dev))
        except BaseException:
            print(dev.output()[-3000:], file=sys.stderr)
            raise
        finally:
            dev.stop()


if __name__ == "__main__":
    main()
