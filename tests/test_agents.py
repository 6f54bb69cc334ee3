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


# ---- Verify & Save between two platforms -----------------------------------------------------------


@pytest.fixture
async def platform_b(dev_env, task_queue, tmp_path):
    registry = SqliteRegistry(tmp_path / "b-agents.db", sealing.new_key())
    async with baton_api(dev_env.client, settings_for(task_queue + "-b"), registry) as client:
        yield client
    registry.close()


@pytest.fixture
def private_networks(monkeypatch):
    monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")


async def connect(http, **body):
    return await http.post("/v1/admin/agents/external", json=body, headers=ADMIN)


async def test_verify_and_save_connects_two_platforms(http, platform_b, private_networks):
    agent = await create(platform_b, "tech-support")
    r = await connect(http, agent_id=agent["agent_id"], secret=agent["secret"], domain=str(platform_b.base_url))
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["kind"] == "external" and saved["verified_at"] and saved["domain"] == str(platform_b.base_url).rstrip("/")
    listed = await http.get("/v1/admin/agents", headers=ADMIN)
    assert [a["agent_id"] for a in listed.json()["agents"]] == [agent["agent_id"]]
    assert agent["secret"] not in listed.text


@pytest.mark.parametrize(
    ("case", "problem"),
    [("wrong-secret", "secret: "), ("wrong-agent", "secret: "), ("malformed-secret", "secret: malformed")],
)
async def test_verify_and_save_refuses_wrong_credentials_and_saves_nothing(http, platform_b, private_networks, case, problem):
    agent = await create(platform_b)
    body = {"agent_id": agent["agent_id"], "secret": agent["secret"], "domain": str(platform_b.base_url)}
    if case == "wrong-secret":
        body["secret"] = webhooks.generate_secret()
    elif case == "wrong-agent":
        body["agent_id"] = "agt_someoneelse"
    elif case == "malformed-secret":
        body["secret"] = "not-a-whsec-secret"
    r = await connect(http, **body)
    assert r.status_code == 422 and r.json()["detail"].startswith(problem), r.text
    assert (await http.get("/v1/admin/agents", headers=ADMIN)).json()["agents"] == []


async def test_verify_and_save_reports_a_dead_domain(http, private_networks):
    from devkit.temporal import free_port

    r = await connect(http, agent_id="agt_x", secret=webhooks.generate_secret(), domain=f"http://127.0.0.1:{free_port()}")
    assert r.status_code == 422 and r.json()["detail"].startswith("domain: could not reach")


async def test_verify_and_save_refuses_a_private_domain_by_default(http, platform_b, monkeypatch):
    monkeypatch.delenv("BATON_ALLOW_PRIVATE_NETWORKS", raising=False)
    agent = await create(platform_b)
    r = await connect(http, agent_id=agent["agent_id"], secret=agent["secret"], domain=str(platform_b.base_url))
    assert r.status_code == 422 and r.json()["detail"].startswith("domain: "), r.text
    assert (await http.get("/v1/admin/agents", headers=ADMIN)).json()["agents"] == []


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ((200, {}, {"agent_id": "agt_fake", "proof": base64.b64encode(b"\0" * 32).decode()}), "proof: "),
        ((200, {}, {"unexpected": True}), "proof: "),
        ((404, {}, {"detail": "Not Found"}), "domain: "),
        ((302, {"Location": "http://169.254.169.254/"}, None), "domain: "),
    ],
    ids=["bad-proof", "not-a-proof", "not-baton", "redirect"],
)
async def test_verify_and_save_refuses_a_platform_that_cannot_prove(http, private_networks, answer, problem):
    from tests.receiver import Receiver

    secret = webhooks.generate_secret()
    async with Receiver(secret=secret) as fake:
        fake.script(answer)
        r = await connect(http, agent_id="agt_fake", secret=secret, domain=fake.base_url)
        assert len(fake.requests) == 1 and fake.requests[0].verified  # it was asked, signed, exactly once
    assert r.status_code == 422 and r.json()["detail"].startswith(problem), r.text
    assert (await http.get("/v1/admin/agents", headers=ADMIN)).json()["agents"] == []


async def test_baton_agents_command_creates_connects_lists_and_removes(http, platform_b, tmp_path):
    import asyncio
    import os
    import sys
    from pathlib import Path

    baton = str(Path(sys.executable).parent / "baton")

    async def run(base_url, *args, stdin=None):
        env = {**os.environ, "BATON_ADMIN_KEY": "ba_test_admin", "BATON_HOME": str(tmp_path), "BATON_ALLOW_PRIVATE_NETWORKS": "1"}
        proc = await asyncio.create_subprocess_exec(
            baton, "agents", "--api", str(base_url), *args, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await run(platform_b.base_url, "create", "tech-support")
    created = json.loads(out)
    assert code == 0 and created["secret"].startswith("whsec_")
    # The API's process reads BATON_ALLOW_PRIVATE_NETWORKS per request; the test process runs it.
    os.environ["BATON_ALLOW_PRIVATE_NETWORKS"] = "1"
    try:
        code, out, err = await run(http.base_url, "connect", created["agent_id"], "--secret", "-",
                                   "--domain", str(platform_b.base_url), stdin=created["secret"].encode() + b"\n")
        assert code == 0, err
        code, out, err = await run(http.base_url, "connect", created["agent_id"], "--secret", webhooks.generate_secret(),
                                   "--domain", str(platform_b.base_url))
        assert code == 1 and "422: secret:" in err
    finally:
        del os.environ["BATON_ALLOW_PRIVATE_NETWORKS"]
    code, out, _ = await run(http.base_url, "list")
    assert code == 0 and [a["agent_id"] for a in json.loads(out)["agents"]] == [created["agent_id"]]
    assert created["secret"] not in out
    assert (await run(http.base_url, "remove", created["agent_id"]))[0] == 0
    code, _, err = await run(http.base_url, "remove", created["agent_id"])
    assert code == 1 and "404" in err
