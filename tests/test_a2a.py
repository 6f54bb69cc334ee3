"""A2A agents as handoff targets: Verify & Save by the agent card, the handoff, the input-required round trip,
completed -> back to our AI, rejected -> the next rung. The agent is built with the official `a2a-sdk`'s own server
classes (its card route and JSON-RPC route, a task store, an executor) and served over real HTTP on loopback;
Baton's real API and worker talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
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
async def served(make) -> AsyncIterator[str]:
    """`make(base_url) -> (asgi_app, request_handler)` served on a free loopback port until the block ends; yields
    the base URL (bound first: the card's interface URL holds the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app, handler = make(base)
    server = EmbeddedServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.wait({task, asyncio.create_task(server.ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    try:
        yield base
    finally:
        server.should_exit = True
        await task
        await handler.aclose()


def a2a_agent(make_card=None, raw: bytes | None = None):
    """An A2A agent from the SDK's own routes; `raw`: serve these bytes as the card instead (a broken agent)."""

    def make(base: str):
        agent_card = (make_card or card)(base)
        handler = DefaultRequestHandler(Idle(), InMemoryTaskStore(), agent_card)
        if raw is not None:
            routes: list[Any] = [Route("/.well-known/agent-card.json", lambda request: Response(raw))]
        else:
            routes = [*create_agent_card_routes(agent_card), *create_jsonrpc_routes(handler, rpc_url="/a2a")]
        return Starlette(routes=routes), handler

    return served(make)


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
    ({"protocol": "a2a", "credential": "short"}, "credential"),
    ({"protocol": "a2a", "credential": "has a space in it"}, "credential"),
    ({"protocol": "baton"}, "secret: required for protocol baton"),
    ({"protocol": "baton", "secret": "whsec_" + "A" * 44, "credential": "x" * 12}, "credential: only for protocol a2a"),
    ({"protocol": "mcp"}, "protocol"),
])
async def test_a_request_that_does_not_fit_its_protocol_is_422(http, body, problem):
    r = await http.post("/v1/admin/agents/external", json={"agent_id": "x", "domain": "https://a.example", **body},
                        headers=ADMIN)
    assert r.status_code == 422 and problem in r.text, r.text


async def test_an_a2a_agent_out_of_reach_is_retried_and_a_forbidden_interface_is_refused(registry, private_networks):
    """The activity's own rules: no answer is a retryable error (the workflow's retry policy and the SLA decide);
    an interface address the outbound policy forbids (here cloud metadata) is a refusal, never a call."""
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from activities.platform import PlatformActivities
    from devkit.temporal import free_port
    from models.names import Errors

    def saved(url: str) -> None:
        registry.save_external("versions", "", "http://127.0.0.1:9", protocol="a2a",
                               a2a={"url": url, "protocol_version": "1.0", "name": "V", "skills": ["s"], "auth": None})

    deliver = PlatformActivities(lambda: registry, "https://baton.example").deliver_handoff
    delivery = HandoffDelivery(agent_id="versions", handoff_id="h-1", conversation_id="c-1", context=SharedContext(),
                               transcript=[], answers=True)
    saved(f"http://127.0.0.1:{free_port()}/a2a")
    # A conversation of older code (no a2a-answers patch) could not record the answers: refused, never called.
    old = await ActivityEnvironment().run(deliver, delivery.model_copy(update={"answers": False}))
    assert not old.accepted and "started before Baton 1.1" in old.detail
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(deliver, delivery)
    assert err.value.type == Errors.AGENT_UNAVAILABLE and not err.value.non_retryable
    saved("http://169.254.169.254/a2a")
    outcome = await ActivityEnvironment().run(deliver, delivery)
    assert not outcome.accepted and "cannot be reached" in outcome.detail


# ---- handing a conversation to an A2A agent (the sending side) ------------------------------------------------


class VersionAgent(AgentExecutor):
    """First message of a task: asks which version (input-required); the next: an update plan (an artifact), done.
    A first message that mentions "reject" is rejected. Keeps what it received, to check what crossed."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        from google.protobuf.json_format import MessageToDict
        from a2a.helpers import new_task_from_user_message, new_text_part
        from a2a.server.tasks import TaskUpdater
        from a2a.types import TaskState

        self.received.append(MessageToDict(context.message))
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        text = context.get_user_input()
        if task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
            await updater.add_artifact([new_text_part(f"Update plan: install version {text.strip()} and restart.")],
                                       name="plan")
            await updater.complete(updater.new_agent_message([new_text_part(f"Done: {text.strip()} is fixed.")]))
        elif "reject" in text:
            await updater.reject(updater.new_agent_message([new_text_part("I only handle version questions.")]))
        elif "fail" in text:
            await updater.failed(updater.new_agent_message([new_text_part("My backend is down.")]))
        else:
            await updater.requires_input(updater.new_agent_message([new_text_part("Which version do you use?")]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:  # pragma: no cover
        raise NotImplementedError


class BearerOnly:
    """The SDK does not enforce the card's security: the agent's app does (ASGI middleware)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] != "/.well-known/agent-card.json":
            if dict(scope["headers"]).get(b"authorization") != f"Bearer {TOKEN}".encode():
                await Response(b'{"error": "unauthorized"}', status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def version_agent() -> AsyncIterator[tuple[str, VersionAgent]]:
    executor = VersionAgent()

    def make(base: str):
        agent_card = card(base, security="bearer")
        handler = DefaultRequestHandler(executor, InMemoryTaskStore(), agent_card)
        return BearerOnly(Starlette(routes=[*create_agent_card_routes(agent_card),
                                            *create_jsonrpc_routes(handler, rpc_url="/a2a")])), handler

    async with served(make) as base:
        yield base, executor


@pytest.fixture
async def stack_a2a(dev_env, task_queue, registry, channel, private_networks):
    from tests.harness import baton_worker

    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    async with version_agent() as (base, executor), baton_worker(dev_env.client, settings, registry), baton_api(
        dev_env.client, settings, registry
    ) as http:
        r = await connect(http, agent_id="versions", domain=base, credential=TOKEN)
        assert r.status_code == 201, r.text
        yield http, executor


CANARY_AUTH = "CANARY-A2A-AUTH-41f0"


async def test_an_a2a_agent_takes_a_handoff_asks_the_user_and_hands_back_when_done(stack_a2a, channel):
    from tests.test_routing_flow import audit, eventually, say, snap

    http, executor = stack_a2a
    conversation = f"a2a-{uuid.uuid4().hex[:10]}"
    r = await http.put(f"/v1/conversations/{conversation}/context",
                       json={"profile": {"name": "Ada"}, "auth": {"session": CANARY_AUTH}})
    assert r.status_code == 200, r.text
    await say(http, conversation, "The app crashes on start")
    await channel.wait_count(1)
    r = await http.post(f"/v1/conversations/{conversation}/handoff",
                        json={"reason": "app crashes", "target": {"external_agent": "versions"},
                              "fallback": [{"queue": "general"}]})
    assert r.status_code == 200, r.text

    def said() -> list[tuple[str, str]]:
        return [(m["role"], m["text"]) for m in channel.delivered() if m["conversation_id"] == conversation]

    await channel.wait_for(lambda _: ("external_agent", "Which version do you use?") in said(), timeout=20)
    s = await snap(http, conversation)
    assert s["state"] == "external_agent" and s["owner"] == "versions"
    task_id = s["external"]["remote_conversation_id"]

    await say(http, conversation, "2.5")
    await channel.wait_for(lambda _: ("external_agent", "Done: 2.5 is fixed.") in said(), timeout=20)
    await channel.wait_for(lambda _: any(role == "ai" and "back" in text for role, text in said()[3:]), timeout=20)
    assert ("external_agent", "Update plan: install version 2.5 and restart.") in said()
    s = await snap(http, conversation)
    assert s["state"] == "ai" and s["owner"] == "ai"
    kinds = [e["kind"] for e in await audit(http, conversation)]
    assert kinds.count("handoff_accepted") == 1 and "handed_back" in kinds

    # What crossed: one message with the reason and summary as text and the filtered context as data, in our
    # conversation's context; then the user's answer in the same task. Never the auth canary.
    first, second = executor.received
    assert first["contextId"] == conversation and first["taskId"] == task_id  # the task the agent opened for it
    assert first["parts"][0]["text"].startswith("app crashes\n\nSummary: ")
    assert first["parts"][1]["data"]["context"]["profile"] == {"name": "Ada"}
    assert second == {**second, "contextId": conversation, "taskId": task_id}
    assert second["parts"] == [{"text": "2.5"}]
    assert CANARY_AUTH not in str(executor.received)
    # In order and once at the channel.
    seqs = [m["seq"] for m in channel.delivered() if m["conversation_id"] == conversation]
    assert seqs == sorted(set(seqs))


@pytest.mark.parametrize(("reason", "state"), [("please reject this", "TASK_STATE_REJECTED"),
                                               ("this will fail", "TASK_STATE_FAILED")], ids=["rejected", "failed"])
async def test_an_a2a_agent_that_rejects_or_fails_the_task_walks_the_ladder(stack_a2a, channel, reason, state):
    from tests.test_routing_flow import audit, say, waiting_in

    http, executor = stack_a2a
    conversation = f"a2a-{uuid.uuid4().hex[:10]}"
    await say(http, conversation, "hello")
    await channel.wait_count(1)
    r = await http.post(f"/v1/conversations/{conversation}/handoff",
                        json={"reason": reason, "target": {"external_agent": "versions"},
                              "fallback": [{"queue": "general"}]})
    assert r.status_code == 200, r.text
    await waiting_in(http, conversation, "general")
    failed = [e for e in await audit(http, conversation) if e["kind"] == "handoff_failed"]
    assert f"did not take the task ({state})" in failed[0]["detail"]["reason"]
