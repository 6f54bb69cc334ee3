"""Agent registry and routes: local agents with secrets never shown twice, signed verify, rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook

from activities import sealing, webhooks
from activities.registry import SqliteRegistry
from tests.harness import baton_api, settings_for

ADMIN = {"Authorization": "Bearer ba_test_admin"}


@pytest.fixture
def registry(tmp_path):
    r = SqliteRegistry(tmp_path / "agents.db", sealing.new_key())
    yield r
    r.close()


@pytest.fixture
async def http(dev_env, task_queue, registry):
    async with baton_api(dev_env.client, settings_for(task_queue), registry) as client:
        yield client


def signed(secret: str, body: dict, msg_id: str | None = None, at: datetime | None = None) -> tuple[bytes, dict]:
    """Signed exactly as another platform would, with the reference Standard Webhooks library."""
    raw = json.dumps(body).encode()
    msg_id = msg_id or "msg_" + secrets.token_hex(8)
    at = at or datetime.now(timezone.utc)
    signature = Webhook(secret).sign(msg_id, at, raw.decode())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature,
               "content-type": "application/json"}
    return raw, headers


def expected_proof(secret: str, challenge: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return base64.b64encode(hmac.new(key, challenge.encode(), hashlib.sha256).digest()).decode()


async def create(http, name="tech-support") -> dict:
    r = await http.post("/v1/admin/agents/local", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()


async def test_creating_a_local_agent_returns_its_secret_once(http, registry, tmp_path):
    agent = await create(http)
    assert agent["agent_id"].startswith("agt_") and agent["secret"].startswith("whsec_")
    listed = await http.get("/v1/admin/agents", headers=ADMIN)
    assert [a["agent_id"] for a in listed.json()["agents"]] == [agent["agent_id"]]
    assert agent["secret"] not in listed.text and agent["secret"].removeprefix("whsec_") not in listed.text
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("agents.db*"))
    assert agent["secret"].removeprefix("whsec_").encode() not in stored  # encrypted at rest


async def test_admin_routes_need_the_admin_key(http):
    assert (await http.post("/v1/admin/agents/local", json={"name": "x"})).status_code == 401  # the API key is not enough
    r = await http.get("/v1/admin/agents", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "BATON_ADMIN_KEY" in r.json()["detail"]


async def test_bad_agent_name_is_422(http):
    r = await http.post("/v1/admin/agents/local", json={"name": ""}, headers=ADMIN)
    assert r.status_code == 422 and "body.name" in r.json()["detail"]


async def test_verify_answers_a_signed_challenge_with_proof(http):
    agent = await create(http)
    challenge = secrets.token_urlsafe(32)
    raw, headers = signed(agent["secret"], {"challenge": challenge})
    r = await http.post(f"/v1/agents/{agent['agent_id']}/verify", content=raw, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"agent_id": agent["agent_id"], "proof": expected_proof(agent["secret"], challenge)}
    assert webhooks.proof_matches(agent["secret"], challenge, r.json()["proof"])


@pytest.mark.parametrize("tamper", ["unsigned", "forged", "stale", "future", "other-secret", "body-changed"])
async def test_verify_rejects_bad_signatures_with_401(http, tamper):
    agent = await create(http)
    raw, headers = signed(agent["secret"], {"challenge": "c" * 32})
    if tamper == "unsigned":
        headers = {"content-type": "application/json"}
    elif tamper == "forged":
        headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    elif tamper == "stale":
        raw, headers = signed(agent["secret"], {"challenge": "c" * 32}, at=datetime.fromtimestamp(time.time() - 600, timezone.utc))
    elif tamper == "future":
        raw, headers = signed(agent["secret"], {"challenge": "c" * 32}, at=datetime.fromtimestamp(time.time() + 600, timezone.utc))
    elif tamper == "other-secret":
        raw, headers = signed(webhooks.generate_secret(), {"challenge": "c" * 32})
    elif tamper == "body-changed":
        raw = json.dumps({"challenge": "d" * 32}).encode()
    r = await http.post(f"/v1/agents/{agent['agent_id']}/verify", content=raw, headers=headers)
    assert r.status_code == 401, r.text
    assert "proof" not in r.text


async def test_unknown_agent_looks_like_a_bad_signature(http):
    agent = await create(http)
    raw, headers = signed(agent["secret"], {"challenge": "c" * 32})
    r = await http.post("/v1/agents/agt_doesnotexist/verify", content=raw, headers=headers)
    assert r.status_code == 401 and r.json()["detail"] == "unknown agent or bad signature"


async def test_signed_but_malformed_body_is_422(http):
    agent = await create(http)
    raw, headers = signed(agent["secret"], {"challenge": "short"})
    r = await http.post(f"/v1/agents/{agent['agent_id']}/verify", content=raw, headers=headers)
    assert r.status_code == 422


async def test_rotation_keeps_the_old_secret_verifying_and_proves_with_the_signer(http):
    agent = await create(http)
    rotated = (await http.post(f"/v1/admin/agents/{agent['agent_id']}/rotate", headers=ADMIN)).json()
    assert rotated["secret"] != agent["secret"]
    for secret in (agent["secret"], rotated["secret"]):
        raw, headers = signed(secret, {"challenge": "r" * 32})
        r = await http.post(f"/v1/agents/{agent['agent_id']}/verify", content=raw, headers=headers)
        assert r.status_code == 200 and r.json()["proof"] == expected_proof(secret, "r" * 32)
    listed = (await http.get("/v1/admin/agents", headers=ADMIN)).json()["agents"]
    assert listed[0]["rotating_until"] is not None


async def test_removed_agent_can_no_longer_verify(http):
    agent = await create(http)
    assert (await http.delete(f"/v1/admin/agents/{agent['agent_id']}", headers=ADMIN)).status_code == 204
    assert (await http.delete(f"/v1/admin/agents/{agent['agent_id']}", headers=ADMIN)).status_code == 404
    raw, headers = signed(agent["secret"], {"challenge": "c" * 32})
    assert (await http.post(f"/v1/agents/{agent['agent_id']}/verify", content=raw, headers=headers)).status_code == 401


def test_registry_survives_a_reopen_and_needs_its_key(tmp_path):
    key = sealing.new_key()
    first = SqliteRegistry(tmp_path / "a.db", key)
    info, secret = first.create_local("billing")
    first.save_external("remote-1", webhooks.generate_secret(), "https://platform-b.example")
    first.close()
    again = SqliteRegistry(tmp_path / "a.db", key)
    assert again.verifying_secrets(info.agent_id) == [secret]
    assert again.external("remote-1")[0].domain == "https://platform-b.example"
    again.close()
    other = SqliteRegistry(tmp_path / "a.db", sealing.new_key())
    with pytest.raises(ValueError, match="does not open"):
        other.verifying_secrets(info.agent_id)
    other.close()
