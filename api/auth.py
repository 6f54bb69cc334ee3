"""Bearer-key checks for the API: one function, a key per audience (chat backends, operators)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Header, HTTPException


def bearer(expected: str | None, variable: str) -> Callable[..., None]:
    """A FastAPI dependency accepting `Authorization: Bearer <expected>`; compared in constant time."""

    def check(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if not expected or scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
            raise HTTPException(
                401, f"missing or wrong key: send 'Authorization: Bearer ${variable}'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
