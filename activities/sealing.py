"""Seal sensitive context sections (auth, internal notes) so only Baton's processes, never history, can read them.

`BATON_SECRET_KEY` is one Fernet key, or several separated by commas for rotation: the first seals, every one opens
(so values sealed under an old key, in a stored agent's secret or a conversation's history, still open). Rotate by
putting a new key first; drop an old key only once nothing sealed under it is kept: an agent's secret stays sealed
under the key that sealed it until it is saved again (`baton agents rotate` for a local agent, once its old secret's
grace has passed; Verify & Save again for an external one), and a conversation's sealed sections end with its
history."""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


def new_key() -> str:
    return Fernet.generate_key().decode()


def _keys(key: str) -> list[str]:
    return [k.strip() for k in key.split(",") if k.strip()]


def check_key(key: str) -> None:
    """Raises ValueError with a readable reason when `key` is not one or more usable Fernet keys (comma separated)."""
    keys = _keys(key)
    if not keys:
        raise ValueError("BATON_SECRET_KEY is empty (see `baton keys`)")
    for n, k in enumerate(keys, start=1):
        try:
            Fernet(k.encode())
        except (ValueError, TypeError):
            where = f"key {n} of BATON_SECRET_KEY" if len(keys) > 1 else "BATON_SECRET_KEY"
            raise ValueError(f"{where} must be 32 url-safe base64-encoded bytes (see `baton keys`)") from None


def first_key(key: str) -> str:
    """The key that seals (the first of a rotation list)."""
    return _keys(key)[0]


def _fernet(key: str) -> MultiFernet:
    return MultiFernet([Fernet(k.encode()) for k in _keys(key)])


def seal(key: str, value: Any) -> str:
    return _fernet(key).encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()


def unseal(key: str, token: str) -> Any:
    try:
        return json.loads(_fernet(key).decrypt(token.encode()))
    except InvalidToken:
        raise ValueError("sealed value does not open with any key of BATON_SECRET_KEY") from None
