"""Agent routes: operators manage local agents (admin key); other platforms prove they hold a secret (signed).
Verify & Save is specified in docs/platform-protocol.md."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Annotated, Literal

import httpx

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from activities import webhooks
from activities.a2a import CardProblem, verify_card
from activities.outbound import OutboundError, OutboundPolicy, PinnedTransport, resolve_public
from activities.registry import AgentIdTaken, AgentInfo, AgentRegistry
from api.auth import bearer
from models.conversation import ID_PATTERN

AgentPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]


class LocalAgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    agent_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=ID_PATTERN,
        description="optional: the id other platforms will use (generated as agt_<hex> when left out)",
    )


class LocalAgentCreated(BaseModel):
    agent_id: str
    name: str
    secret: str = Field(description="Shown once: hand it to the platform that will hand off to this agent.")
    a2a_token: str = Field(description="Shown once: the bearer token an A2A client uses to hand conversations to this "
                           "agent (its card: /a2a/{agent_id}/.well-known/agent-card.json); derived from the secret, "
                           "so a rotation changes it too.")


class AgentList(BaseModel):
    agents: list[AgentInfo]


class ExternalAgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    protocol: Literal["baton", "a2a"] = Field(
        default="baton", description="`baton`: Baton's platform protocol (the default); `a2a`: an Agent2Agent agent")
    secret: str | None = Field(default=None, min_length=10, max_length=200,
                               description="protocol baton (required): whsec_<base64>, as the other platform shared it")
    credential: str | None = Field(default=None, min_length=8, max_length=4096, pattern=r"^[\x21-\x7e]+$",
                                   description="protocol a2a: the bearer token or API key the agent card asks for "
                                   "(printable ASCII, no spaces)")
    domain: str = Field(min_length=1, max_length=2048, description="the other platform's base URL, e.g. https://baton.example.com")

    @model_validator(mode="after")
    def _fits_the_protocol(self) -> ExternalAgentIn:
        if self.protocol == "baton" and self.secret is None:
            raise ValueError("secret: required for protocol baton")
        if self.protocol == "baton" and self.credential is not None:
            raise ValueError("credential: only for protocol a2a (a Baton platform signs with `secret`)")
        if self.protocol == "a2a" and self.secret is not None:
            raise ValueError("secret: only for protocol baton (an A2A agent takes a `credential`, if its card asks)")
        return self


class VerifyIn(BaseModel):
    """POST /v1/agents/{agent_id}/verify (Verify & Save): a random challenge, signed with the agent's secret."""

    model_config = ConfigDict(extra="forbid")
    challenge: str = Field(min_length=16, max_length=512)


class VerifyOut(BaseModel):
    """The verify route's answer: proof = base64 of HMAC-SHA256 over the challenge, keyed like the signatures."""

    agent_id: str
    proof: str


def signed_by(candidates: list[str], request: Request, body: bytes) -> str:
    """The secret that signed this request, or 401: never 5xx, and an unknown agent looks like a bad signature."""
    reason = "unknown agent or bad signature"
    for secret in candidates:
        try:
            webhooks.verify(secret, request.headers, body)
            return secret
        except webhooks.WebhookVerificationError as err:
            reason = err.reason
    raise HTTPException(401, reason)


def agent_router(
    registry: Callable[[], AgentRegistry], admin_key: str | None, policy: OutboundPolicy | None = None
) -> APIRouter:
    """`policy` None: BATON_ALLOW_PRIVATE_NETWORKS decides, per request."""
    router = APIRouter()

    admin = [Depends(bearer(admin_key, "BATON_ADMIN_KEY"))]

    @router.post("/v1/admin/agents/local", status_code=201, response_model=LocalAgentCreated, dependencies=admin, tags=["admin"])
    def create_local_agent(body: LocalAgentIn) -> LocalAgentCreated:
        """An agent here that other platforms may hand off to. The secret is returned this once only."""
        try:
            info, secret = registry().create_local(body.name, body.agent_id)
        except AgentIdTaken as err:
            raise HTTPException(409, str(err)) from None
        return LocalAgentCreated(agent_id=info.agent_id, name=body.name, secret=secret, a2a_token=webhooks.a2a_token(secret))

    @router.post("/v1/admin/agents/{agent_id}/rotate", response_model=LocalAgentCreated, dependencies=admin, tags=["admin"])
    def rotate_local_agent(agent_id: AgentPath) -> LocalAgentCreated:
        """A new secret signs from now on; the old one keeps verifying for 7 days while the other side updates."""
        secret = registry().rotate_local(agent_id)
        if secret is None:
            raise HTTPException(404, f"no local agent '{agent_id}'")
        info = next(a for a in registry().list() if a.agent_id == agent_id)
        return LocalAgentCreated(agent_id=agent_id, name=info.name or "", secret=secret,
                                 a2a_token=webhooks.a2a_token(secret))

    @router.post("/v1/admin/agents/external", status_code=201, response_model=AgentInfo, dependencies=admin, tags=["admin"])
    async def connect_external_agent(body: ExternalAgentIn) -> AgentInfo:
        """Verify & Save: a signed random challenge goes to the other platform's verify route; the agent is
        saved only if its proof matches. Otherwise 422 says which part is wrong, and nothing is saved. An A2A agent
        (`protocol: a2a`) is verified by its agent card instead (activities/a2a.py)."""
        if body.protocol == "a2a":
            try:
                endpoint = await verify_card(body.domain, body.credential, policy or OutboundPolicy.from_env())
            except CardProblem as err:
                raise HTTPException(422, str(err)) from None
            try:
                return registry().save_external(body.agent_id, body.credential or "", body.domain.rstrip("/"),
                                                protocol="a2a", a2a=endpoint.model_dump())
            except ValueError as err:
                raise HTTPException(409, str(err)) from None
        assert body.secret is not None
        try:
            webhooks.secret_key(body.secret)
        except ValueError as err:
            raise HTTPException(422, f"secret: {err}") from None
        try:
            target = await resolve_public(body.domain, policy or OutboundPolicy.from_env())
        except OutboundError as err:
            raise HTTPException(422, f"domain: {err.reason}") from None
        challenge = secrets.token_urlsafe(32)
        payload = json.dumps({"challenge": challenge}).encode()
        headers = webhooks.headers(body.secret, "vfy_" + secrets.token_hex(12), payload)
        url = target.url_for(f"/v1/agents/{body.agent_id}/verify")
        async with httpx.AsyncClient(transport=PinnedTransport(target), timeout=10, follow_redirects=False) as http:
            try:
                answer = await http.post(url, content=payload, headers=headers)
            except httpx.HTTPError as err:
                raise HTTPException(422, f"domain: could not reach {target.origin} ({type(err).__name__})") from None
        if answer.status_code == 401:
            raise HTTPException(422, f"secret: {target.origin} refused the signature: wrong agent id or secret")
        if answer.status_code != 200:
            raise HTTPException(
                422, f"domain: {target.origin} answered {answer.status_code} on the verify route; is it a Baton platform?"
            )
        try:
            proof = VerifyOut.model_validate_json(answer.content)
        except ValidationError:
            raise HTTPException(422, f"proof: {target.origin} did not answer with {{agent_id, proof}}") from None
        if proof.agent_id != body.agent_id or not webhooks.proof_matches(body.secret, challenge, proof.proof):
            raise HTTPException(422, f"proof: {target.origin} answered, but its proof does not match this secret")
        try:
            return registry().save_external(body.agent_id, body.secret, target.base_url)
        except ValueError as err:
            raise HTTPException(409, str(err)) from None

    @router.get("/v1/admin/agents", response_model=AgentList, dependencies=admin, tags=["admin"])
    def list_agents() -> AgentList:
        return AgentList(agents=registry().list())

    @router.delete("/v1/admin/agents/{agent_id}", status_code=204, dependencies=admin, tags=["admin"])
    def remove_agent(agent_id: AgentPath, kind: Literal["local", "external"] | None = None) -> None:
        """Removes the agent; `kind` picks one when a local and an external agent share the id."""
        if not registry().remove(agent_id, kind):
            raise HTTPException(404, f"no agent '{agent_id}'")

    @router.post("/v1/agents/{agent_id}/verify", response_model=VerifyOut, tags=["platform protocol"])
    async def verify(agent_id: AgentPath, request: Request) -> VerifyOut:
        """Verify & Save, receiving side: a signed challenge answered with HMAC proof of the same secret."""
        body = await request.body()
        secret = signed_by(registry().verifying_secrets(agent_id), request, body)
        try:
            challenge = VerifyIn.model_validate_json(body).challenge
        except (ValidationError, json.JSONDecodeError) as err:
            raise HTTPException(422, f"body must be {{\"challenge\": <16-512 characters>}}: {type(err).__name__}") from None
        # Prove with the secret the caller signed with: during a rotation it may still hold the old one.
        return VerifyOut(agent_id=agent_id, proof=webhooks.proof(secret, challenge))

    return router
