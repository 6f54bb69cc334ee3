"""The worker's own operations endpoints on `BATON_METRICS_PORT`: `/metrics` (the Temporal SDK's metrics and
Baton's deliveries, redactions and handoffs, as the worker counts them), `/readyz` (Temporal reachable, the store
open, the worker polling) and `/healthz` (Temporal reachable). The API serves the same three on its own port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from api import readiness as readiness_
from api.readiness import Readiness
from models.names import Routes
from runtime import metrics


def ops_app(client: Any, readiness: Readiness, store_check: Callable[[], Any], metrics_url: str | None) -> FastAPI:
    app = FastAPI(title="Baton worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(Routes.HEALTHZ)
    async def healthz(request: Request) -> JSONResponse:
        return await readiness_.healthz(client)

    @app.get(Routes.READYZ)
    async def readyz(request: Request) -> JSONResponse:
        return await readiness_.readyz(client, store_check, readiness)

    @app.get(Routes.METRICS)
    async def get_metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await metrics.render(metrics_url, None), media_type=metrics.CONTENT_TYPE)

    return app
