"""The payload codec's remote endpoints (runtime.codec): `POST /codec/decode` and `/codec/encode`, as the Temporal
CLI (`temporal workflow show --codec-endpoint <api>/codec --codec-auth "Bearer $BATON_ADMIN_KEY"`) and the Temporal
UI call them. Body and answer are Temporal's `Payloads` in proto JSON: `{"payloads": [{"metadata": {...},
"data": "<base64>"}]}`. The admin key is required: a decoded payload is a user's words. CORS answers only the origins
in `BATON_CODEC_CORS_ORIGINS` (comma separated, e.g. the Temporal UI's `http://localhost:8233`); none by default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client

from api.auth import bearer
from models.names import Routes

CORS_HEADERS = "authorization, content-type, x-namespace"


# Proto JSON's bytes: base64, standard or URL-safe alphabet, padding optional.
Base64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/_-]*={0,2}$")]


class PayloadJson(BaseModel):
    """One Temporal payload in proto JSON: metadata values and data are base64."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[Annotated[str, StringConstraints(min_length=1, max_length=256)], Base64] = Field(default_factory=dict)
    data: Base64 = ""


class PayloadsJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payloads: list[PayloadJson] = Field(default_factory=list, max_length=1000)


def codec_router(admin_key: str | None, client: Callable[[], Client], cors_origins: list[str]) -> APIRouter:
    router = APIRouter(tags=["operations"])
    admin = Depends(bearer(admin_key, "BATON_ADMIN_KEY"))

    def cors(request: Request, response: Response) -> None:
        origin = request.headers.get("origin")
        if origin and origin in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"

    def codec():
        found = client().data_converter.payload_codec
        if found is None:
            raise HTTPException(404, "payload encryption is off here (BATON_PAYLOAD_KEYS is not set)")
        return found

    def parse(body: PayloadsJson) -> Payloads:
        try:
            return json_format.ParseDict(body.model_dump(), Payloads())
        except json_format.ParseError as err:
            raise HTTPException(422, f"payloads: not Temporal's Payloads JSON ({str(err)[:200]})") from None

    def answer(payloads: list) -> dict:
        return json_format.MessageToDict(Payloads(payloads=payloads))

    @router.options(Routes.CODEC_DECODE, include_in_schema=False)
    @router.options(Routes.CODEC_ENCODE, include_in_schema=False)
    async def preflight(request: Request) -> Response:
        response = Response(status_code=204)
        if request.headers.get("origin") in cors_origins:
            cors(request, response)
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    @router.post(Routes.CODEC_DECODE, response_model=PayloadsJson, dependencies=[admin])
    async def decode(body: PayloadsJson, request: Request, response: Response) -> dict:
        """Decrypt payloads (those that are not encrypted come back as they are)."""
        cors(request, response)
        try:
            return answer(await codec().decode(parse(body).payloads))
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @router.post(Routes.CODEC_ENCODE, response_model=PayloadsJson, dependencies=[admin])
    async def encode(body: PayloadsJson, request: Request, response: Response) -> dict:
        """Encrypt payloads with the current key (what the CLI does before it sends a signal or starts a run)."""
        cors(request, response)
        return answer(await codec().encode(parse(body).payloads))

    return router
