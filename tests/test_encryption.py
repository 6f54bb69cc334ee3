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
