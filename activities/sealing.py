"""Seal sensitive context sections (auth, internal notes) so only Baton's processes, never history, can read them."""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken


def new_key() -> str:
    return Fernet.generate_key().decode()


def check_key(key: str) -> None:
    """Raises ValueError with a readable reason when `key` is not a usable Fernet key."""
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        raise ValueError("BATON_SECRET_KEY must be 32 url-safe base64-encoded bytes (see `baton keys`)") from None


def seal(key: str, value: Any) -> str:
    return Fernet(key.encode()).encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()


def unseal(key: str, token: str) -> Any:
    try:
        return json.loads(Fernet(key.encode()).decrypt(token.encode()))
    except InvalidToken:
        raise ValueError("sealed value does not open with this BATON_SECRET_KEY") from None
