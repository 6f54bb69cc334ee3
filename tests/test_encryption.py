"""Encrypted history (runtime.codec, README "Encrypted history"): with BATON_PAYLOAD_KEYS on, an exported history holds
none of a planted user message, name or reply, while the API and the codec endpoints read them; a payload that is not
encrypted (a `temporal` CLI signal) still decodes; keys rotate (the first encrypts, all decrypt), and so does
BATON_SECRET_KEY."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from activities import sealing
from devkit.temporal import DEV_SERVER
from models.names import Signals, workflow_id
from runtime.codec import ENCODING, EncryptionCodec, PayloadKeysError, data_converter, parse_keys
from tests.harness import baton_api, baton_worker, eventually, history_text, settings_for

ADMIN = {"Authorization": "Bearer ba_test_admin"}
MESSAGE = "my locker code is CANARY-MSG-7731"
NAME = "Quillon Canarywood"


async def run(*cmd: str) -> str:
    """A CLI command's stdout (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def test_history_is_encrypted_at_rest_and_reads_through_the_api_and_the_codec(dev_env, task_queue, channel, registry):
    codec = EncryptionCodec(parse_keys(f"k2={key()},k1={key()}"))
    client = Client(**{**dev_env.client.config(), "data_converter": data_converter(codec)})
    raw = dev_env.client  # no codec: sees what the server stores
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    cid = f"enc-{uuid.uuid4().hex[:10]}"
    async with baton_worker(client, settings, registry), baton_api(client, settings, registry) as http:
        r = await http.put(f"/v1/conversations/{cid}/context", json={"profile": {"name": NAME}})
        assert r.status_code == 200, r.text
        r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": MESSAGE})
        assert r.status_code == 202, r.text

        async def replied():
            t = (await http.get(f"/v1/conversations/{cid}/transcript")).json()["entries"]
            return next((e["text"] for e in t if e["role"] == "ai"), None)
        reply = await eventually(replied)
        assert "CANARY-MSG-7731" in reply  # the demo AI quotes the user: the reply is a canary too
        # A refused command's reason still reads (failure messages are encoded too, and decoded by the API's client).
        r = await http.delete(f"/v1/conversations/{cid}/handoff")
        assert r.status_code == 409 and "no handoff" in r.json()["detail"].lower(), r.text

        history = await raw.get_workflow_handle(workflow_id(cid)).fetch_history()
        stored = history_text(history)
        for canary in ("CANARY-MSG-7731", NAME, "Quillon", reply):
            assert canary not in stored
        assert base64.b64encode(ENCODING).decode() in stored
        # The same history through the codec endpoint (as the Temporal UI and CLI read it), admin key only.
        signal = next(e for e in history.events if e.HasField("workflow_execution_signaled_event_attributes"))
        body = {"payloads": [{"metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                              "data": base64.b64encode(p.data).decode()}
                             for p in signal.workflow_execution_signaled_event_attributes.input.payloads]}
        assert (await http.post("/codec/decode", json=body)).status_code == 401  # the chat-backend key is not enough
        r = await http.post("/codec/decode", json=body, headers=ADMIN)
        assert r.status_code == 200, r.text
        decoded = [base64.b64decode(p["data"]).decode() for p in r.json()["payloads"]]
        assert any(MESSAGE in d for d in decoded) or any(NAME in d for d in decoded), decoded
        # encode and decode round-trip; a payload that is not Temporal's JSON is a 422.
        plain = {"payloads": [{"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                               "data": base64.b64encode(b'"CANARY-PLAIN-55"').decode()}]}
        sealed = (await http.post("/codec/encode", json=plain, headers=ADMIN)).json()
        assert sealed["payloads"][0]["metadata"]["encoding"] == base64.b64encode(ENCODING).decode()
        assert plain["payloads"][0]["data"] not in json.dumps(sealed)
        assert (await http.post("/codec/decode", json=sealed, headers=ADMIN)).json() == plain
        bad = await http.post("/codec/decode", json={"payloads": [{"data": "%%%"}]}, headers=ADMIN)
        assert bad.status_code == 422, bad.text
        # A run's largest payloads pass (the API's other routes stop at 256 KiB).
        big = {"payloads": [{"metadata": plain["payloads"][0]["metadata"],
                             "data": base64.b64encode(b'"' + b"x" * 600_000 + b'"').decode()}]}
        r = await http.post("/codec/encode", json=big, headers=ADMIN)
        assert r.status_code == 200, r.text[:300]
        assert (await http.post("/codec/decode", json=r.json(), headers=ADMIN)).json() == big

        # The real Temporal CLI through the codec endpoint: it reads the history in plain text; without it, not.
        address = dev_env.client.service_client.config.target_host
        show = [str(DEV_SERVER), "workflow", "show", "-w", workflow_id(cid), "--address", address, "-o", "json"]
        codec_args = ["--codec-endpoint", f"{http.base_url}/codec", "--codec-auth", ADMIN["Authorization"]]
        seen = history_text(WorkflowHistory.from_json(workflow_id(cid), await run(*show, *codec_args)))
        assert "CANARY-MSG-7731" in seen and NAME in seen
        assert "CANARY-MSG-7731" not in history_text(WorkflowHistory.from_json(workflow_id(cid), await run(*show)))
        # A signal sent by the CLI without the codec (plain JSON) still decodes in the worker.
        await run(str(DEV_SERVER), "workflow", "signal", "-w", workflow_id(cid), "--address", address,
                  "--name", Signals.USER_MESSAGE, "--input", json.dumps({"message_id": "u2", "text": "plain hello from the CLI"}))

        async def heard():
            t = (await http.get(f"/v1/conversations/{cid}/transcript")).json()["entries"]
            return any(e["text"] == "plain hello from the CLI" for e in t)
        await eventually(heard)


async def test_a_codec_endpoint_answers_404_when_encryption_is_off(dev_env, task_queue, registry):
    settings = settings_for(task_queue)
    async with baton_api(dev_env.client, settings, registry) as http:
        r = await http.post("/codec/decode", json={"payloads": []}, headers=ADMIN)
        assert r.status_code == 404 and "BATON_PAYLOAD_KEYS" in r.json()["detail"]


async def test_the_codec_answers_the_ui_origin_with_cors_on_every_status_and_nobody_else(dev_env, task_queue, registry):
    """The Temporal UI calls /codec from its own origin: the browser shows it an answer only with CORS headers,
    so they go on errors too (a 401 says the key is missing, not "CORS error"); other origins get none, and other
    routes stay closed to the UI's origin."""
    ui = "http://localhost:8233"
    client = Client(**{**dev_env.client.config(),
                       "data_converter": data_converter(EncryptionCodec(parse_keys(f"k1={key()}")))})
    settings = settings_for(task_queue, codec_cors_origins=f"{ui}/, https://ui.example")
    async with baton_api(client, settings, registry) as http:
        pre = await http.options("/codec/decode", headers={"Origin": ui, "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == ui
        assert "authorization" in pre.headers["access-control-allow-headers"]
        assert pre.headers["access-control-allow-credentials"] == "true"
        body = {"payloads": [{"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                              "data": base64.b64encode(b'"hi"').decode()}]}
        for headers, status in (({**ADMIN}, 200), ({"Authorization": "Bearer wrong"}, 401), ({}, 401)):
            r = await http.post("/codec/decode", json=body, headers={**headers, "Origin": ui})
            assert r.status_code == status and r.headers.get("access-control-allow-origin") == ui, (r.status_code, r.headers)
        bad = await http.post("/codec/encode", json={"payloads": "nope"}, headers={**ADMIN, "Origin": ui})
        assert bad.status_code == 422 and bad.headers.get("access-control-allow-origin") == ui
        # Refused by its declared length before a byte is read (a raw request: the client sends none).
        reader, writer = await asyncio.open_connection(http.base_url.host, http.base_url.port)
        writer.write((f"POST /codec/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {9 << 20}\r\nAuthorization: {ADMIN['Authorization']}\r\n"
                      f"Origin: {ui}\r\n\r\n").encode())
        await writer.drain()
        head = (await asyncio.wait_for(reader.read(65536), timeout=10)).split(b"\r\n\r\n")[0].decode().lower()
        writer.close()
        assert head.startswith("http/1.1 413") and f"access-control-allow-origin: {ui}" in head, head
        for origin in ("https://evil.example", "null"):
            r = await http.post("/codec/decode", json=body, headers={**ADMIN, "Origin": origin})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
            pre = await http.options("/codec/decode", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            assert "access-control-allow-origin" not in pre.headers
        other = await http.get("/v1/conversations/none/transcript", headers={"Origin": ui})
        assert "access-control-allow-origin" not in other.headers


async def test_the_temporal_ui_signs_in_once_and_decodes_with_a_session_cookie_from_its_origin_only(
        dev_env, task_queue, registry):
    """The Temporal UI cannot send the admin key: an operator signs in at /codec/sign-in (a form, the key in the body),
    and the UI's calls carry the session cookie. It counts from the UI's origin only, is HttpOnly for /codec only,
    ends at sign-out or when the admin key changes, and a forged or expired one is refused."""
    import time as clock

    from api.codec import SESSION_COOKIE, issue_session, session_valid

    ui = "http://localhost:8233"
    client = Client(**{**dev_env.client.config(),
                       "data_converter": data_converter(EncryptionCodec(parse_keys(f"k1={key()}")))})
    settings = settings_for(task_queue, codec_cors_origins=ui)
    body = {"payloads": [{"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                          "data": base64.b64encode(b'"hi"').decode()}]}
    async with baton_api(client, settings, registry) as http:
        page = await http.get("/codec/sign-in")
        assert page.status_code == 200 and 'name="admin_key"' in page.text and 'type="password"' in page.text
        assert "form-action 'self'" in page.headers["content-security-policy"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        wrong = await http.post("/codec/sign-in", data={"admin_key": "not-it"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers and "not the admin key" in wrong.text
        signed = await http.post("/codec/sign-in", data={"admin_key": settings.admin_key})
        assert signed.status_code == 200, signed.text
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Path=/codec" in cookie and "SameSite=lax" in cookie, cookie
        assert settings.admin_key not in cookie
        token = signed.cookies[SESSION_COOKIE]
        jar = {"Cookie": f"{SESSION_COOKIE}={token}"}
        # The UI's call: no Authorization, its origin, the cookie.
        http.headers.pop("Authorization", None)
        r = await http.post("/codec/decode", json=body, headers={**jar, "Origin": ui})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ui, r.text
        # Not from another origin, nor without one (a page elsewhere, a script); not forged, not expired.
        assert (await http.post("/codec/decode", json=body, headers={**jar, "Origin": "https://evil.example"})).status_code == 401
        assert (await http.post("/codec/decode", json=body, headers=jar)).status_code == 401
        until, _, mac = token.partition(".")
        forged = f"{int(until) + 3600}.{mac}"
        assert (await http.post("/codec/decode", json=body,
                                headers={"Cookie": f"{SESSION_COOKIE}={forged}", "Origin": ui})).status_code == 401
        old = issue_session(settings.admin_key, now=clock.time() - 9 * 3600)
        assert not session_valid(settings.admin_key, old) and session_valid(settings.admin_key, token)
        assert not session_valid("another-admin-key", token)
        # Not an ASCII number (a digit int() refuses): refused, not a 500.
        odd = await http.post("/codec/decode", json=body,
                              headers={"Cookie": f"{SESSION_COOKIE}=\u00b2.x".encode("latin-1"), "Origin": ui})
        assert odd.status_code == 401 and odd.headers["access-control-allow-origin"] == ui
        out = await http.post("/codec/sign-out")
        assert out.status_code == 200 and f'{SESSION_COOKIE}=""' in out.headers["set-cookie"]
        # Bigger than a form: refused.
        assert (await http.post("/codec/sign-in", content=b"admin_key=" + b"x" * 5000,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})).status_code == 413


async def test_keys_rotate_the_first_encrypts_and_every_key_decrypts():
    old, new = key(), key()
    before = EncryptionCodec(parse_keys(f"k1={old}"))
    after = EncryptionCodec(parse_keys(f"k2={new},k1={old}"))
    payload = pydantic_data_converter.payload_converter.to_payloads([{"text": "hello"}])[0]
    sealed_old = (await before.encode([payload]))[0]
    sealed_new = (await after.encode([payload]))[0]
    assert sealed_old.metadata["encryption-key-id"] == b"k1" and sealed_new.metadata["encryption-key-id"] == b"k2"
    assert (await after.decode([sealed_old, sealed_new])) == [payload, payload]
    # Not encrypted: as it is.
    assert (await after.decode([payload])) == [payload]
    # A key id it does not hold, or a payload bound to another id, fails with a reason.
    with pytest.raises(ValueError, match="'k2', which is not in BATON_PAYLOAD_KEYS"):
        await before.decode([sealed_new])
    # The key id is bound to the ciphertext: relabelled under another id holding the very same key, it still fails.
    same = EncryptionCodec({"k1": base64.b64decode(old), "k9": base64.b64decode(old)})
    relabelled = Payload(metadata={**sealed_old.metadata, "encryption-key-id": b"k9"}, data=sealed_old.data)
    assert (await same.decode([sealed_old])) == [payload]
    with pytest.raises(ValueError, match="does not open"):
        await same.decode([relabelled])


@pytest.mark.parametrize("value, why", [
    ("", "holds no key"),
    ("k1", "must be <id>=<base64 key>"),
    ("k 1=" + base64.b64encode(bytes(32)).decode(), "must be <id>=<base64 key>"),
    ("k1=" + base64.b64encode(bytes(16)).decode(), "16 bytes; AES-256 needs 32"),
    ("k1=not*base64", "not base64"),
    ("k1={k},k1={k}".format(k=base64.b64encode(bytes(32)).decode()), "appears twice"),
])
def test_bad_payload_keys_say_what_is_wrong_without_the_key(value, why):
    with pytest.raises(PayloadKeysError, match=why.replace("(", r"\(")) as err:
        parse_keys(value)
    assert "AAAAAAAA" not in str(err.value)


def test_the_secret_key_rotates_old_keys_still_open_what_they_sealed():
    old, new = sealing.new_key(), sealing.new_key()
    sealed = sealing.seal(old, {"token": "t-1"})
    assert sealing.unseal(f"{new},{old}", sealed) == {"token": "t-1"}
    resealed = sealing.seal(f"{new},{old}", {"token": "t-2"})
    assert sealing.unseal(new, resealed) == {"token": "t-2"}  # the first key seals
    with pytest.raises(ValueError, match="does not open"):
        sealing.unseal(old, resealed)
    with pytest.raises(ValueError, match="key 2 of BATON_SECRET_KEY"):
        sealing.check_key(f"{new},nope")


async def test_the_real_temporal_ui_reads_encrypted_history_once_an_operator_signs_in(tmp_path, chromium, registry):
    """The stock Temporal UI (the one `baton dev` starts, pointed at the API's /codec as `baton dev` does when
    BATON_PAYLOAD_KEYS is set), in headless Chromium: before signing in it cannot decode and shows no plaintext;
    after signing in at /codec/sign-in and turning on "Include cross-origin credentials" it shows the run's input."""
    from playwright.async_api import expect

    from devkit.temporal import free_port
    from workers.devserver import DevServer

    api_port, ui_port = free_port(), free_port()
    endpoint = f"http://localhost:{api_port}/codec"
    server = DevServer(tmp_path / "home", port=free_port(), ui_port=ui_port, codec_endpoint=endpoint)
    await server.start()
    context = await chromium.new_context()
    try:
        client = await Client.connect(server.address, data_converter=data_converter(
            EncryptionCodec(parse_keys(f"k1={key()}"))))
        settings = settings_for(f"ui-{uuid.uuid4().hex[:8]}", codec_cors_origins=f"http://localhost:{ui_port}",
                                api_port=api_port)
        cid = f"ui-{uuid.uuid4().hex[:8]}"
        async with baton_worker(client, settings, registry), baton_api(client, settings, registry, port=api_port) as http:
            r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": MESSAGE})
            assert r.status_code == 202, r.text
            page = await context.new_page()
            run = f"http://localhost:{ui_port}/namespaces/default/workflows/{workflow_id(cid)}"
            await page.goto(run)
            trouble = page.get_by_role("button", name="Codec Server could not connect")
            await expect(trouble).to_be_visible(timeout=30_000)
            assert f'"conversation_id": "{cid}"' not in await page.inner_text("body")

            await page.goto(f"http://localhost:{api_port}/codec/sign-in")
            await page.get_by_label("Admin key").fill(settings.admin_key)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Baton: signed in for the Temporal UI")).to_be_visible()

            await page.goto(run)
            await trouble.click()
            await page.get_by_text("Use my browser setting").click()
            await page.get_by_placeholder("Paste your endpoint here").fill(endpoint)
            await page.get_by_text("Include cross-origin credentials").click()
            await page.get_by_role("button", name="Apply").click()
            await page.reload()
            await expect(page.locator("body")).to_contain_text(f'"conversation_id": "{cid}"', timeout=30_000)
            await expect(trouble).to_have_count(0)
    finally:
        await context.close()
        server.stop()
