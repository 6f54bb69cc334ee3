"""Encrypted history: an AES-256-GCM payload codec on every client and worker when `BATON_PAYLOAD_KEYS` is set.

`BATON_PAYLOAD_KEYS` = `id=base64key[,id=base64key...]`: the first key encrypts, every key decrypts (rotation: put
the new key first, keep the old ones while histories they sealed are kept). Each encrypted payload carries its key's
id in its metadata and is bound to it (associated data), so a payload cannot be opened under another id's key.

A payload that is not encrypted (a signal sent with the `temporal` CLI, a history recorded before encryption was
on) decodes as it is. Failure messages and stack traces are encoded too (the SDK's encoded failure attributes), so an
error that quotes a user's words does not leave it in plain text. Search attributes are never encoded by Temporal:
Baton puts no personal data in them.

`baton keys` prints a fresh `BATON_PAYLOAD_KEYS` value; the API serves `/codec/encode` and `/codec/decode` for the
Temporal CLI (`--codec-endpoint`) and UI (README, "Operating")."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import secrets
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

ENV = "BATON_PAYLOAD_KEYS"
ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class PayloadKeysError(ValueError):
    """`BATON_PAYLOAD_KEYS` is malformed: the message says which entry and why (never the key itself)."""


def parse_keys(value: str) -> dict[str, bytes]:
    """`id=base64key,...` in order (the first encrypts). Raises PayloadKeysError with a readable reason."""
    keys: dict[str, bytes] = {}
    for n, entry in enumerate((e.strip() for e in value.split(",")), start=1):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition("=")
        key_id = key_id.strip()
        if not sep or not _ID.match(key_id):
            raise PayloadKeysError(f"{ENV}: entry {n} must be <id>=<base64 key>, the id 1-64 of A-Z a-z 0-9 _ . -")
        if key_id in keys:
            raise PayloadKeysError(f"{ENV}: key id '{key_id}' appears twice")
        try:
            raw = base64.b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise PayloadKeysError(f"{ENV}: key '{key_id}' is not base64") from None
        if len(raw) != 32:
            raise PayloadKeysError(f"{ENV}: key '{key_id}' is {len(raw)} bytes; AES-256 needs 32 (`baton keys` makes one)")
        keys[key_id] = raw
    if not keys:
        raise PayloadKeysError(f"{ENV} is set but holds no key")
    return keys


def new_keys_value(key_id: str | None = None) -> str:
    """A fresh `BATON_PAYLOAD_KEYS` entry: an id (dated by default) and 32 random bytes."""
    import datetime

    key_id = key_id or "k" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    return f"{key_id}={base64.b64encode(secrets.token_bytes(32)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each serialized payload: data = nonce (12 bytes) + ciphertext and tag."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self.keys = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.key_id = next(iter(keys))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.keys[self.key_id].encrypt(nonce, payload.SerializeToString(), self.key_id.encode())
        return Payload(metadata={"encoding": ENCODING, KEY_ID: self.key_id.encode()}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # not encrypted (a CLI signal, a history from before): as it is
        key_id = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
        aead = self.keys.get(key_id)
        if aead is None:
            raise ValueError(f"payload encrypted with key id '{key_id}', which is not in {ENV}")
        try:
            plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise ValueError(f"payload under key id '{key_id}' does not open (tampered, or another key)") from None
        return Payload.FromString(plain)


def codec_from_env(env: Mapping[str, str] | None = None) -> EncryptionCodec | None:
    value = (os.environ if env is None else env).get(ENV)
    return EncryptionCodec(parse_keys(value)) if value else None


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """Baton's converter (pydantic), with the codec and encoded failure attributes when encryption is on."""
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter, payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
