"""The exact OpenAPI document (api/openapi.py): its shape, and a property-based run (schemathesis) against a live
`baton dev` that finds no 5xx and no response outside the schema (status, content type, body)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from activities import webhooks
from activities.registry import open_registry
from api.app import create_app
from runtime.settings import KEYS_FILE, read_keys_file
from tests.harness import settings_for
from tests.test_embedded import Embedded

ST = Path(sys.executable).parent / "st"


def spec() -> dict:
    return create_app(settings_for("openapi", demo_pages=True), client=None).openapi()


def test_every_operation_says_its_key_errors_and_short_id():
    doc = spec()
    assert set(doc["components"]["securitySchemes"]) == {
        "chatBackendKey", "adminKey", "agentToken", "demoSession", "a2aToken", "webhookSignature"}
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and {"Problem", "ValidationProblem"} <= set(schemas)
    ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ids.append(op["operationId"])
            assert len(op["operationId"]) <= 30 and "_v1_" not in op["operationId"], op["operationId"]
            assert "security" in op, (method, path)
            responses = op["responses"]
            if op["security"]:
                assert responses["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
            if "422" in responses:
                assert responses["422"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ValidationProblem"}
    assert len(ids) == len(set(ids))
    by_path = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert by_path[("post", "/v1/conversations/{conversation_id}/messages")]["security"] == [{"chatBackendKey": []}]
    assert by_path[("get", "/v1/admin/agents")]["security"] == [{"adminKey": []}]
    assert by_path[("post", "/v1/desk/conversations/{conversation_id}/claim")]["security"] == [{"agentToken": []}]
    assert by_path[("get", "/healthz")]["security"] == []
    # The signed routes' bodies, from the models they parse.
    event = by_path[("post", "/v1/agents/{agent_id}/events")]
    assert event["security"] == [{"webhookSignature": []}]
    assert event["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PeerEvent"}
    assert by_path[("post", "/v1/desks/{desk}/events")]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ThirdPartyDeskEvent"}
    # Baton's calls to others; what is never sent is not in their bodies.
    hooks = doc["webhooks"]
    assert set(hooks) == {"channelMessage", "aiAgentTurn", "platformHandoff", "platformMessage", "platformEvent",
                          "thirdPartyDeskHandoff", "thirdPartyDeskMessage"}
    channel = schemas["ChannelMessageBody"]
    assert "bell" not in channel["properties"] and {"conversation_id", "text", "message_id"} <= set(channel["properties"])
    assert "route" not in schemas["AgentTurnBody"]["properties"]


def test_a_property_based_run_finds_no_5xx_and_no_response_outside_the_schema(tmp_path):
    e = Embedded(tmp_path / "baton-home")
    e.start()
    try:
        keys = read_keys_file(e.home / KEYS_FILE)
        admin = {"Authorization": f"Bearer {keys['BATON_ADMIN_KEY']}"}
        with httpx.Client(base_url=e.api, timeout=30, trust_env=False) as http:
            r = http.post("/v1/admin/live-agents", headers=admin,
                          json={"agent_id": "fuzz", "name": "Fuzz", "queues": ["general", "tier2"]})
            assert r.status_code == 201, r.text
            token = r.json()["token"]
            session = http.post("/demo/sessions").json()["session"]
        registry = open_registry(None, e.home, keys["BATON_SECRET_KEY"])
        a2a = webhooks.a2a_token(registry.verifying_secrets("tech-support")[0])
        registry.close()
        # One credential per security scheme (the signed routes get none: every case is a 401, documented).
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            f'[auth.openapi.chatBackendKey]\nbearer = "{keys["BATON_API_KEY"]}"\n'
            f'[auth.openapi.adminKey]\nbearer = "{keys["BATON_ADMIN_KEY"]}"\n'
            f'[auth.openapi.agentToken]\nbearer = "{token}"\n'
            f'[auth.openapi.demoSession]\nbearer = "{session}"\n'
            f'[auth.openapi.a2aToken]\nbearer = "{a2a}"\n'
        )
        run = subprocess.run(
            [str(ST), "--config-file", str(config), "run", f"{e.api}/openapi.json",
             "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                         "response_schema_conformance",
             # The event streams never end (tests/test_stream.py covers them).
             "--exclude-path-regex", "events$",
             "--max-examples", "10", "--max-time", "75", "--request-timeout", "20", "--seed", "20261201",
             "--no-shrink", "--workers", "1"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
        summary = run.stdout[-4000:]
        assert run.returncode == 0, summary
        assert " passed" in summary and "failures" not in summary.split("Test cases:")[-1], summary
    finally:
        e.stop()
