"""The exact OpenAPI document (README, "The OpenAPI document"): what FastAPI derives from the routes, made true to
what Baton does.

- A security scheme per kind of key, and on each operation the one it checks: the chat-backend key, the admin key,
  a live agent's token, a demo session, an A2A token, or a Standard Webhooks signature (the platform protocol and
  third-party desks). Open routes say `security: []`.
- Every error status a route returns, with Baton's real error body: `Problem` (`{"detail"}`) and, for 422,
  `ValidationProblem` (`{"detail", "errors": [{"where", "problem"}]}`), not FastAPI's `HTTPValidationError`.
- The signed routes read their raw body (the signature covers its bytes): their request bodies are documented from
  the models they parse.
- The calls Baton makes to others, as `webhooks`: the channel callback, the AI agent's turn, the platform protocol's
  envelope, messages and events, a third-party desk's handoff and forwards.
- Short operation ids (the endpoint's name, a few made clearer here)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

# Operation ids that read better than the endpoint's bare name.
RENAMES = {
    "claim": "desk_claim", "close": "desk_close", "read": "desk_read", "reply": "desk_reply", "release": "desk_release",
    "transfer": "desk_transfer", "me": "desk_me", "offers": "desk_offers", "waiting": "desk_waiting",
    "report": "desk_report", "rpc": "a2a_rpc", "card": "a2a_card", "decode": "codec_decode", "encode": "codec_encode",
    "verify": "protocol_verify", "receive_handoff": "protocol_receive_handoff",
    "receive_message": "protocol_receive_message", "receive_event": "protocol_receive_event",
}

SCHEMES = {
    "chatBackendKey": {"type": "http", "scheme": "bearer", "bearerFormat": "bk_...",
                       "description": "BATON_API_KEY: chat backends (conversations, their event streams)."},
    "adminKey": {"type": "http", "scheme": "bearer", "bearerFormat": "ba_...",
                 "description": "BATON_ADMIN_KEY: operators (agents, live agents, reports, the payload codec)."},
    "agentToken": {"type": "http", "scheme": "bearer", "bearerFormat": "lat_...",
                   "description": "A live agent's token (POST /v1/admin/live-agents returns it once)."},
    "demoSession": {"type": "http", "scheme": "bearer",
                    "description": "A demo session (POST /demo/sessions), scoped to one conversation."},
    "a2aToken": {"type": "http", "scheme": "bearer", "bearerFormat": "a2a_...",
                 "description": "The A2A token derived from a local agent's secret (README, A2A agents)."},
    "webhookSignature": {"type": "apiKey", "in": "header", "name": "webhook-signature",
                         "description": "Standard Webhooks: `webhook-id`, `webhook-timestamp` and `webhook-signature` "
                                        "(`v1,<base64 HMAC-SHA256 of id.timestamp.body>`) with the shared whsec_ "
                                        "secret; a replayed webhook-id gets the first answer again."},
}

# (method or "*", path pattern) -> security scheme (None: open). First match wins.
SECURITY: list[tuple[str, str, str | None]] = [
    ("*", r"^/(healthz|readyz|metrics)$", None),
    ("GET", r"^/a2a/[^/]+/\.well-known/agent-card\.json$", None),
    ("*", r"^/a2a/", "a2aToken"),
    ("*", r"^/demo/sessions?$", None),
    ("*", r"^/demo/", "demoSession"),
    ("*", r"^/v1/admin/", "adminKey"),
    ("*", r"^/codec/", "adminKey"),
    ("*", r"^/v1/desk/", "agentToken"),
    ("*", r"^/v1/agents/", "webhookSignature"),
    ("*", r"^/v1/desks/", "webhookSignature"),
    ("*", r"^/v1/conversations/", "chatBackendKey"),
]

# Statuses beyond 2xx, 401 (secured) and 422 (a body or a parameter), by (method or "*", path pattern), all that
# match added: why each is returned is in the description.
STATUSES: list[tuple[str, str, dict[int, str]]] = [
    # Anything that asks Temporal: unreachable, or no worker polling within 10 s (Retry-After).
    ("*", r"^/v1/(conversations|desk|agents|desks)/|^/a2a/[^/]+$|^/demo/(messages|events)$",
     {503: "Temporal is unreachable, or no worker answered in time (Retry-After says when to try again)"}),
    ("*", r"^/v1/conversations/\{conversation_id\}", {404: "the conversation does not exist"}),
    ("POST", r"^/v1/conversations/\{conversation_id\}/(handoff|close)$",
     {409: "the workflow refused the command (its reason in detail)"}),
    ("DELETE", r"^/v1/conversations/\{conversation_id\}/handoff$",
     {409: "the workflow refused the command (its reason in detail)"}),
    ("PUT", r"^/v1/conversations/\{conversation_id\}/context$",
     {409: "the workflow refused the command (its reason in detail)",
      503: "BATON_SECRET_KEY is not set, so sensitive context cannot be sealed"}),
    ("POST", r"^/v1/conversations/\{conversation_id\}/messages$",
     {409: "the conversation is closed or refused the message"}),
    ("*", r"^/v1/desk/conversations/", {403: "not the owner, or lacking a skill or the queue",
                                         404: "the conversation does not exist",
                                         409: "claimed by someone else, at capacity, offered to another, or refused"}),
    ("*", r"^/v1/desk/offers/", {404: "no such offer of yours", 409: "the offer lapsed or was taken"}),
    ("*", r"^/v1/desk/queues/", {403: "you do not work this queue"}),
    ("*", r"^/v1/admin/agents/\{agent_id\}", {404: "no such agent"}),
    ("POST", r"^/v1/admin/(agents/local|live-agents)$", {409: "the id is taken"}),
    ("POST", r"^/v1/admin/agents/external$",
     {502: "the other platform could not be reached or did not prove the secret"}),
    ("*", r"^/v1/admin/", {503: "BATON_SECRET_KEY is not set, so agent secrets cannot be stored"}),
    ("*", r"^/v1/agents/", {404: "no such agent or conversation", 409: "the conversation refused it",
                            413: "the body is too large"}),
    ("*", r"^/codec/", {404: "payload encryption is off here (BATON_PAYLOAD_KEYS is not set)"}),
    ("*", r"^/demo/", {404: "the demo pages are off"}),
    ("GET", r"^/a2a/", {404: "no such local agent"}),
    ("GET", r"^/readyz$", {503: "not ready: the body names what is missing"}),
    ("GET", r"^/healthz$", {503: "Temporal is unreachable"}),
]


class Problem(BaseModel):
    """Baton's error body."""

    detail: str


class Where(BaseModel):
    where: str
    problem: str


class ValidationProblem(BaseModel):
    """Baton's 422: what is wrong, field by field (values are never echoed)."""

    detail: str
    errors: list[Where] = []


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _add_models(schemas: dict, *models: type[BaseModel]) -> None:
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault(model.__name__, schema)


def _json_body(name: str, description: str) -> dict:
    return {"required": True, "description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _signed_bodies() -> dict[tuple[str, str], tuple[type[BaseModel], str]]:
    from api.agents import VerifyIn
    from models.protocol import HandoffEnvelope, PeerEvent, PeerMessage
    from models.third_party_desk import ThirdPartyDeskEvent

    return {
        ("post", "/v1/agents/{agent_id}/verify"): (VerifyIn, "a random challenge, signed with the agent's secret"),
        ("post", "/v1/agents/{agent_id}/handoffs"): (HandoffEnvelope, "the handoff envelope, signed"),
        ("post", "/v1/agents/{agent_id}/conversations/{remote_conversation_id}/messages"):
            (PeerMessage, "the user's next message, signed"),
        ("post", "/v1/agents/{agent_id}/events"): (PeerEvent, "what the receiving platform's agent says or does"),
        ("post", "/v1/desks/{desk}/events"): (ThirdPartyDeskEvent, "the desk's status callback, signed"),
    }


def _webhooks() -> dict[str, tuple[type[BaseModel], set[str], str, str]]:
    """Baton's outgoing calls: name -> (body model, its fields left out of the body, where it goes, what it is)."""
    from models.conversation import AgentTurn, ChannelMessage
    from models.protocol import HandoffEnvelope, PeerEvent, PeerMessage
    from models.third_party_desk import ThirdPartyDeskEnvelope, ThirdPartyDeskUserMessage

    return {
        "channelMessage": (ChannelMessage, {"bell"}, "BATON_CHANNEL_URL",
                           "Every message for the user (README, the channel callback); signed with "
                           "BATON_CHANNEL_SECRET; a 2xx ends it, 408/429/5xx are retried with the same webhook-id."),
        "aiAgentTurn": (AgentTurn, {"bell", "route"}, "BATON_AI_AGENT (a URL)",
                        "A turn for your own AI agent; signed with BATON_AI_AGENT_SECRET; answered with the reply."),
        "platformHandoff": (HandoffEnvelope, set(), "{domain}/v1/agents/{agent_id}/handoffs",
                            "A handoff to an agent on another platform (the platform protocol); 202 accepts."),
        "platformMessage": (PeerMessage, set(),
                            "{domain}/v1/agents/{agent_id}/conversations/{remote_conversation_id}/messages",
                            "The user's next message to the other platform's agent."),
        "platformEvent": (PeerEvent, set(), "{callback_url}",
                          "Our local agent's reply, hand back or close, to the platform that handed to it."),
        "thirdPartyDeskHandoff": (ThirdPartyDeskEnvelope, set(), "{desk url}/handoffs",
                                  "A handoff to a third-party desk (docs/desk-protocol.md)."),
        "thirdPartyDeskMessage": (ThirdPartyDeskUserMessage, set(), "{desk url}/messages",
                                  "The user's next message to the desk that has the conversation."),
    }


def _add_body(schemas: dict, model: type[BaseModel], leave_out: set[str]) -> str:
    """`model`'s schema as a request body, without `leave_out` (fields Baton never sends); returns its name."""
    if not leave_out:
        _add_models(schemas, model)
        return model.__name__
    name = f"{model.__name__}Body"
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for sub_name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(sub_name, sub)
    for field in leave_out:
        schema.get("properties", {}).pop(field, None)
    schema["required"] = [f for f in schema.get("required", []) if f not in leave_out]
    schema["title"] = name
    schemas[name] = schema
    return name


def _error(description: str, schema: str = "Problem") -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def exact(app: FastAPI) -> dict[str, Any]:
    """The document, built once and kept (FastAPI's `app.openapi` contract)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description,
                       routes=app.routes, webhooks=app.webhooks.routes)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _add_models(schemas, Problem, ValidationProblem)
    components["securitySchemes"] = SCHEMES
    signed = _signed_bodies()
    _add_models(schemas, *(model for model, _ in signed.values()))
    for path, item in spec["paths"].items():
        for method, op in item.items():
            op["operationId"] = RENAMES.get(op.get("operationId", ""), op.get("operationId"))
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _error("the request is not valid: what is wrong, field by field", "ValidationProblem")
            scheme = next((s for m, pattern, s in SECURITY
                           if m in ("*", method.upper()) and re.search(pattern, path)), None)
            op["security"] = [{scheme: []}] if scheme else []
            if scheme is not None:
                why = "bad or stale signature, or an unknown agent" if scheme == "webhookSignature" else \
                    "missing or wrong key"
                responses["401"] = _error(why)
            if (method, path) in signed:
                model, description = signed[(method, path)]
                op["requestBody"] = _json_body(model.__name__, description)
                responses["422"] = _error("the body is not valid", "ValidationProblem")
            if method in ("post", "put", "patch") and "requestBody" in op:
                responses.setdefault("413", _error("the body is larger than the API takes (256 KiB; 8 MiB on /codec)"))
                responses.setdefault("422", _error("the body is not valid", "ValidationProblem"))
            for m, pattern, statuses in STATUSES:
                if m in ("*", method.upper()) and re.search(pattern, path):
                    for status, why in statuses.items():
                        responses.setdefault(str(status), _error(why))
            # FastAPI documents 422 for any parameter: keep it only where something can be invalid.
            if "422" in responses and not op.get("parameters") and "requestBody" not in op:
                responses.pop("422")
    hooks = _webhooks()
    bodies = {name: _add_body(schemas, model, leave_out) for name, (model, leave_out, _, _) in hooks.items()}
    spec["webhooks"] = {
        name: {"post": {
            "operationId": f"webhook_{re.sub(r'(?<!^)(?=[A-Z])', '_', name).lower()}",
            "summary": f"POST {where}",
            "description": what,
            "security": [{"webhookSignature": []}],
            "requestBody": _json_body(bodies[name], what),
            "responses": {"2XX": {"description": "received"},
                          "408": {"description": "timeout: retried with the same webhook-id"},
                          "429": {"description": "too many requests: retried with the same webhook-id"},
                          "5XX": {"description": "retried with the same webhook-id"}},
        }}
        for name, (_, _, where, what) in hooks.items()
    }
    app.openapi_schema = spec
    return spec
