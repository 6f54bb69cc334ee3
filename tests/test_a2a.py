"""A2A agents (issue 12, item 3, first part): Verify & Save by the agent card. The agent is built with the official
`a2a-sdk`'s own server classes (its card route and JSON-RPC route, a task store, an executor) and served over real
HTTP on loopback; Baton's real API fetches and checks its card."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    OAuth2SecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from api.serve import EmbeddedServer
from models.protocol import HandoffDelivery
from models.filtering import SharedContext
from tests.harness import baton_api, settings_for

ADMIN = {"Authorization": "Bearer ba_test_admin"}
TOKEN = "a2a-token-CANARY-5c1d"


class Idle(AgentExecutor):
    """Verify & Save never sends a message; the executor is here because the SDK's handler needs one."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:  # pragma: no cover
        raise NotImplementedError

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:  # pragma: no cover
        raise NotImplementedError


def card(base_url: str, *, skills: bool = True, binding: str = "JSONRPC", version: str = "1.0",
         security: str | None = None, interface_url: str | None = None) -> AgentCard:
    made = AgentCard(
        name="Version agent", description="Plans upgrades.", version="1.0.0",
        supported_interfaces=[AgentInterface(url=interface_url or base_url + "/a2a", protocol_binding=binding,
                                             protocol_version=version)],
        capabilities=AgentCapabilities(streaming=False, push_notifications=False),
        default_input_modes=["text/plain", "application/json"], default_output_modes=["text/plain"],
        skills=[AgentSkill(id="upgrade", name="Upgrade planner", description="Plans an upgrade.", tags=["upgrade"])]
        if skills else [],
    )
    if security == "bearer":
        made.security_schemes["bearer"].CopyFrom(
            SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer")))
        made.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList()}))
    elif security == "oauth2":
        made.security_schemes["oauth"].CopyFrom(SecurityScheme(oauth2_security_scheme=OAuth2SecurityScheme()))
        made.security_requirements.append(SecurityRequirement(schemes={"oauth": StringList()}))
    return made


@contextlib.asynccontextmanager
async def a2a_agent(make_card=None, raw: bytes | None = None) -> AsyncIterator[str]:
    """An A2A agent on a free loopback port, from the SDK's own routes; yields its base URL. `raw`: serve these
    bytes as the card instead (a broken agent)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    agent_card = (make_card or card)(base)
    handler = DefaultRequestHandler(Idle(), InMemoryTaskStore(), agent_card)
    if raw is not None:
        routes: list[Any] = [Route("/.well-known/agent-card.json", lambda request: Response(raw))]
    else:
        routes = [*create_agent_card_routes(agent_card), *create_jsonrpc_routes(handler, rpc_url="/a2a")]
    server = EmbeddedServer(uvicorn.Config(Starlette(routes=routes), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.wait({task, asyncio.create_task(server.ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    try:
        yield base
    finally:
        server.should_exit = True
        await task
        await handler.aclose()


@pytest.fixture
async def http(dev_env, task_queue, registry):
    async with baton_api(dev_env.client, settings_for(task_queue), registry) as client:
        yield client


@pytest.fixture
def private_networks(monkeypatch):
    monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")


async def connect(http, **body):
    return await http.post("/v1/admin/agents/external", json={"protocol": "a2a", **body}, headers=ADMIN)


async def test_verify_and_save_by_the_agent_card(http, registry, private_networks):
    async with a2a_agent() as base:
        r = await connect(http, agent_id="versions", domain=base)
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["protocol"] == "a2a" and saved["verified_at"] and saved["domain"] == base
    assert saved["a2a"] == {"url": base + "/a2a", "protocol_version": "1.0", "name": "Version agent",
                            "skills": ["upgrade"], "auth": None}
    listed = (await http.get("/v1/admin/agents", headers=ADMIN)).json()["agents"]
    assert [(a["agent_id"], a["protocol"]) for a in listed] == [("versions", "a2a")]
    assert registry.external("versions")[1] == ""  # no credential: the card asks for none


async def test_a_card_that_asks_for_a_bearer_token_needs_a_credential(http, registry, private_networks):
    async with a2a_agent(lambda base: card(base, security="bearer")) as base:
        missing = await connect(http, agent_id="versions", domain=base)
        assert missing.status_code == 422, missing.text
        assert missing.json()["detail"] == "credential: the card requires authentication (bearer); send a credential"
        r = await connect(http, agent_id="versions", domain=base, credential=TOKEN)
    assert r.status_code == 201 and r.json()["a2a"]["auth"] == {"scheme": "bearer", "header": "authorization"}
    assert TOKEN not in r.text and TOKEN not in (await http.get("/v1/admin/agents", headers=ADMIN)).text
    assert registry.external("versions")[1] == TOKEN  # sealed in the registry, opened only by activities


@pytest.mark.parametrize(("make", "raw", "problem"), [
    (lambda base: card(base, skills=False), None, "card: lists no skills"),
    (lambda base: card(base, binding="GRPC"), None, "card: offers no JSON-RPC interface of A2A 1.x (found: GRPC 1.0)"),
    (lambda base: card(base, version="0.3"), None, "card: offers no JSON-RPC interface of A2A 1.x (found: JSONRPC 0.3)"),
    (lambda base: card(base, security="oauth2"), None, "card: its security schemes are not supported: oauth (oauth2"),
    (lambda base: card(base, interface_url="http://169.254.169.254/a2a"), None, "card: its JSON-RPC interface "
     "http://169.254.169.254/a2a: "),
    (None, b"<html>not a card</html>", "card: not a valid A2A agent card"),
], ids=["no-skills", "grpc-only", "a2a-0.3", "oauth2", "metadata-address", "not-json"])
async def test_a_card_baton_cannot_use_is_422_naming_why_and_nothing_is_saved(http, private_networks, make, raw, problem):
    async with a2a_agent(make, raw=raw) as base:
        r = await connect(http, agent_id="versions", domain=base)
    assert r.status_code == 422 and r.json()["detail"].startswith(problem), r.text
    assert (await http.get("/v1/admin/agents", headers=ADMIN)).json()["agents"] == []


async def test_a_private_address_is_refused_by_default_and_a_dead_domain_is_reported(http, monkeypatch):
    from devkit.temporal import free_port

    monkeypatch.delenv("BATON_ALLOW_PRIVATE_NETWORKS", raising=False)
    async with a2a_agent() as base:
        r = await connect(http, agent_id="versions", domain=base)
    assert r.status_code == 422 and r.json()["detail"].startswith("domain: "), r.text
    monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")
    r = await connect(http, agent_id="versions", domain=f"http://127.0.0.1:{free_port()}")
    assert r.status_code == 422 and r.json()["detail"].startswith("domain: could not reach"), r.text
    assert (await http.get("/v1/admin/agents", headers=ADMIN)).json()["agents"] == []


@pytest.mark.parametrize(("body", "problem"), [
    ({"protocol": "a2a", "secret": "whsec_" + "A" * 44}, "secret: only for protocol baton"),
    ({"protocol": "baton"}, "secret: required for protocol baton"),
    ({"protocol": "baton", "secret": "whsec_" + "A" * 44, "credential": "x"}, "credential: only for protocol a2a"),
    ({"protocol": "mcp"}, "protocol"),
])
async def test_a_request_that_does_not_fit_its_protocol_is_422(http, body, problem):
    r = await http.post("/v1/admin/agents/external", json={"agent_id": "x", "domain": "https://a.example", **body},
                        headers=ADMIN)
    assert r.status_code == 422 and problem in r.text, r.text


async def test_a_handoff_to_an_a2a_agent_is_refused_with_its_reason_until_delivery_is_built(registry, private_networks):
    """Sending a conversation to an A2A agent is the next step; until then the activity says so and the workflow's
    ladder moves on (the audit keeps the reason)."""
    from temporalio.testing import ActivityEnvironment

    from activities.platform import PlatformActivities

    registry.save_external("versions", "", "http://127.0.0.1:9", protocol="a2a", a2a={"url": "http://127.0.0.1:9/a2a"})
    outcome = await ActivityEnvironment().run(
        PlatformActivities(lambda: registry, "https://baton.example").deliver_handoff,
        HandoffDelivery(agent_id="versions", handoff_id="h-1", conversation_id="c-1", context=SharedContext(),
                        transcript=[]),
    )
    assert not outcome.accepted and "speaks A2A" in outcome.detail
