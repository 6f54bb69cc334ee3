"""A2A (Agent2Agent) agents as external agents: Verify & Save by the agent card, and one message at a time to the
agent's JSON-RPC interface (`send`, used by activities/platform.py for the handoff and the user's later messages).

`POST /v1/admin/agents/external {"agent_id", "protocol": "a2a", "domain", "credential"?}` fetches the card at
`{domain}/.well-known/agent-card.json` through the outbound policy (public addresses only, pinned, no redirects,
bounded size), parses it with the official `a2a-sdk`'s types, and accepts it only when Baton can talk to the agent:
a JSON-RPC interface of A2A 1.x whose URL passes the same policy, at least one skill, and an auth scheme the
credential fits (a bearer token, or an API key in a header) when the card asks for one. What is saved is the
interface URL, how to authenticate and the card's name and skills; the credential is sealed like a secret."""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
from google.protobuf.json_format import ParseDict, ParseError
from pydantic import BaseModel

from activities.outbound import OutboundError, OutboundPolicy, PinnedTransport, resolve_public
from activities.signed_post import untrusted

CARD_PATH = "/.well-known/agent-card.json"  # a2a.utils.constants.AGENT_CARD_WELL_KNOWN_PATH
MAX_CARD_BYTES = 256 * 1024
CARD_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# An API key's header: an HTTP token (RFC 9110), and not one the request itself needs.
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_NOT_A_KEY_HEADER = {"host", "content-length", "content-type", "transfer-encoding", "connection", "a2a-version",
                     "accept", "user-agent", "cookie"}


class CardProblem(ValueError):
    """Why a card cannot be saved, with the request field it is about (for the API's 422)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class A2AAuth(BaseModel):
    scheme: Literal["bearer", "api_key"]
    header: str = "authorization"


class A2AEndpoint(BaseModel):
    """What Verify & Save keeps of an A2A agent's card."""

    url: str  # the JSON-RPC interface's URL (checked against the outbound policy)
    protocol_version: str
    name: str
    skills: list[str]
    auth: A2AAuth | None = None


async def verify_card(domain: str, credential: str | None, policy: OutboundPolicy) -> A2AEndpoint:
    """Fetch and check the agent card at `domain`; raises CardProblem naming the field that is wrong."""
    from a2a.types import AgentCard  # the SDK's protobuf types, imported where they are used

    try:
        target = await resolve_public(domain, policy)
    except OutboundError as err:
        raise CardProblem("domain", err.reason) from None
    url = target.url_for(CARD_PATH)
    async with httpx.AsyncClient(transport=PinnedTransport(target), timeout=CARD_TIMEOUT,
                                 follow_redirects=False) as http:
        try:
            async with http.stream("GET", url, headers={"accept": "application/json"}) as answer:
                if answer.status_code != 200:
                    raise CardProblem("domain", f"{target.origin} answered {answer.status_code} for the agent card at "
                                      f"{CARD_PATH}; is it an A2A agent?")
                body = b""
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_CARD_BYTES:
                        raise CardProblem("card", f"larger than {MAX_CARD_BYTES // 1024} KB")
        except httpx.HTTPError as err:
            raise CardProblem("domain", f"could not reach {target.origin} ({type(err).__name__})") from None
    try:
        card = ParseDict(json.loads(body), AgentCard(), ignore_unknown_fields=True)
    except (ValueError, ParseError) as err:
        # The parser's message names the field; it never holds more than the card's own (public) content.
        raise CardProblem("card", f"not a valid A2A agent card ({str(err)[:200]})") from None
    if not card.name.strip():
        raise CardProblem("card", "has no name")
    interfaces = [i for i in card.supported_interfaces
                  if i.protocol_binding.upper() == "JSONRPC" and i.protocol_version.split(".")[0] == "1"]
    if not interfaces:
        found = ", ".join(f"{i.protocol_binding} {i.protocol_version}".strip() for i in card.supported_interfaces)
        raise CardProblem("card", f"offers no JSON-RPC interface of A2A 1.x (found: {found or 'none'})")
    interface = interfaces[0]
    try:
        # The card names where the calls go; a card must not send them anywhere the policy would not.
        await resolve_public(interface.url, policy)
    except OutboundError as err:
        raise CardProblem("card", f"its JSON-RPC interface {interface.url[:200]}: {err.reason}") from None
    if not card.skills:
        raise CardProblem("card", "lists no skills")
    return A2AEndpoint(url=interface.url, protocol_version=interface.protocol_version, name=card.name[:200],
                       skills=[s.id[:128] for s in card.skills][:100], auth=_auth(card, credential))


def _auth(card, credential: str | None) -> A2AAuth | None:
    """How the credential is sent, as the card's security asks; None when it asks for nothing."""
    required = {name for requirement in card.security_requirements for name in requirement.schemes}
    if not required:
        if credential:
            raise CardProblem("credential", "the card asks for no authentication; leave the credential out")
        return None
    supported: list[A2AAuth] = []
    others = []
    for name in sorted(required):
        scheme = card.security_schemes.get(name)
        kind = scheme.WhichOneof("scheme") if scheme is not None else None
        if kind == "http_auth_security_scheme" and scheme.http_auth_security_scheme.scheme.lower() == "bearer":
            supported.append(A2AAuth(scheme="bearer"))
        elif (kind == "api_key_security_scheme" and scheme.api_key_security_scheme.location.lower() == "header"
              and _HEADER.match(scheme.api_key_security_scheme.name)
              and scheme.api_key_security_scheme.name.lower() not in _NOT_A_KEY_HEADER):
            supported.append(A2AAuth(scheme="api_key", header=scheme.api_key_security_scheme.name.lower()))
        else:
            others.append(f"{name} ({kind or 'undeclared'})")
    if not supported:
        raise CardProblem("card", f"its security schemes are not supported: {', '.join(others)} (Baton sends a bearer "
                          "token or an API key in a header)")
    if not credential:
        raise CardProblem("credential", f"the card requires authentication ({supported[0].scheme}); send a credential")
    return supported[0]


# ---- handing over and passing on (the sending side) -----------------------------------------------------------

SEND_TIMEOUT = httpx.Timeout(12.0, connect=5.0)  # under the delivery activities' 15 s start-to-close
# A2A task states (a2a.types.TaskState names) and what they mean for Baton.
WORKING = {"TASK_STATE_SUBMITTED", "TASK_STATE_WORKING", "TASK_STATE_INPUT_REQUIRED"}
DONE = "TASK_STATE_COMPLETED"
ENDED_BADLY = {"TASK_STATE_FAILED", "TASK_STATE_REJECTED", "TASK_STATE_CANCELED", "TASK_STATE_AUTH_REQUIRED",
               "TASK_STATE_UNSPECIFIED"}
# An answer's history can be long: its latest agent messages this many at most are read (an agent that says more
# between two of our calls has the rest shown only in its status message).
RECENT_HISTORY = 10
# A message-mode answer (no task): the context is the conversation; later messages go to the same context.
CONTEXT_ONLY = "context:"


class Unavailable(Exception):
    """The agent could not be reached or did not answer in time: the caller's retry policy decides."""


class Answer(BaseModel):
    """An A2A agent's answer to one message."""

    state: str  # a TaskState name, or "message" (answered without a task)
    task_id: str | None = None
    replies: list[dict] = []  # {"message_id", "text"}: status message first, then (once completed) artifacts
    status: int | None = None
    refused: str | None = None  # why the call itself was refused (401, a JSON-RPC error): no answer at all
    gone: bool = False  # the task is over or unknown to the agent


def _card(endpoint: A2AEndpoint):
    from a2a.types import AgentCapabilities, AgentCard, AgentInterface

    return AgentCard(name=endpoint.name, description=endpoint.name, version="1",
                     supported_interfaces=[AgentInterface(url=endpoint.url, protocol_binding="JSONRPC",
                                                          protocol_version=endpoint.protocol_version)],
                     capabilities=AgentCapabilities(streaming=False, push_notifications=False),
                     default_input_modes=["text/plain", "application/json"], default_output_modes=["text/plain"])


def _shown(text: str, credential: str) -> str:
    """Remote text bound for logs and history (the credential is at least 8 characters, as the API requires)."""
    return untrusted(text, credential, 200)


async def send(endpoint: A2AEndpoint, credential: str, policy: OutboundPolicy, *, context_id: str, task_id: str,
               message_id: str, text: str, data: dict | None = None) -> Answer:
    """Send one message (a text part, and a data part when given) and read the agent's answer, through the outbound
    policy: the interface URL is checked and pinned, every request the SDK makes goes to that address only."""
    from a2a.client import A2AClientError, A2AClientTimeoutError, ClientConfig, ClientFactory
    from a2a.helpers import get_artifact_text, get_message_text, new_data_part, new_text_part
    from a2a.types import Message, Role, SendMessageRequest, TaskState
    from a2a.utils.errors import A2AError, TaskNotFoundError, UnsupportedOperationError

    try:
        target = await resolve_public(endpoint.url, policy)
    except OutboundError as err:
        return Answer(state="", refused=f"cannot be reached: {err.reason}", gone=True)
    headers = {}
    if endpoint.auth is not None and credential:
        headers[endpoint.auth.header] = f"Bearer {credential}" if endpoint.auth.scheme == "bearer" else credential
    parts = [new_text_part(text)] + ([new_data_part(data)] if data is not None else [])
    message = Message(role=Role.ROLE_USER, message_id=message_id, context_id=context_id, task_id=task_id, parts=parts)
    async with httpx.AsyncClient(transport=PinnedTransport(target), timeout=SEND_TIMEOUT, headers=headers,
                                 follow_redirects=False) as http:
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(_card(endpoint))
        last = None
        try:
            async for response in client.send_message(SendMessageRequest(message=message)):
                last = response
        except A2AClientTimeoutError:
            raise Unavailable("did not answer in time") from None
        except A2AClientError as err:
            status = getattr(getattr(err.__cause__, "response", None), "status_code", None)
            if status is None or status in (408, 429) or status >= 500:
                raise Unavailable(f"unreachable ({_shown(str(err), credential)[:120]})") from None
            return Answer(state="", status=status, refused=f"answered {status}")
        except (TaskNotFoundError, UnsupportedOperationError) as err:
            return Answer(state="", refused=f"{type(err).__name__}: {_shown(str(err), credential)}", gone=True)
        except A2AError as err:
            return Answer(state="", refused=f"{type(err).__name__}: {_shown(str(err), credential)}")
        except OutboundError as err:
            return Answer(state="", refused=f"cannot be reached: {err.reason}", gone=True)
        finally:
            await client.close()
    if last is None:
        return Answer(state="", refused="answered nothing")
    if last.WhichOneof("payload") == "message":
        said = get_message_text(last.message)
        return Answer(state="message", replies=[{"message_id": last.message.message_id, "text": said}] if said else [])
    task = last.task
    state = TaskState.Name(task.status.state)
    replies = []
    # What the agent said: its latest messages in the task's history (it may have spoken since our last call; the
    # workflow records each id once, so the ones it has are not shown twice), then the status message.
    said = [m for m in task.history if m.role == Role.ROLE_AGENT][-RECENT_HISTORY:]
    if task.status.HasField("message") and task.status.message.role != Role.ROLE_USER:
        said.append(task.status.message)
    seen: set[str] = set()
    for m in said:
        text = get_message_text(m)
        if text and (m.message_id or text) not in seen:
            seen.add(m.message_id or text)
            replies.append({"message_id": m.message_id, "text": text})
    if state == DONE:
        # What the task produced, once it is done (artifacts accumulate on a task; shown once, at its end).
        for artifact in task.artifacts:
            said = get_artifact_text(artifact)
            if said:
                replies.append({"message_id": f"{task.id}:{artifact.artifact_id}", "text": said})
    return Answer(state=state, task_id=task.id, replies=replies)
