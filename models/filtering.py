"""The context filter's contracts: what the workflow passes in and gets back (see activities/filtering.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.conversation import Context, ReceiptEntry, TranscriptEntry

SECTIONS = ("profile", "slots", "metadata")
NEVER_LEAVE = ("auth", "internal_notes")


class FilterContext(BaseModel):
    """The context as the workflow holds it. `auth`, `internal_notes` and `sealed` may be passed; they never leave."""

    model_config = ConfigDict(extra="forbid")

    profile: dict[str, Any] = Field(default_factory=dict)
    slots: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    auth: Any = None
    internal_notes: Any = None
    # Ciphertexts of auth / internal_notes patches (see models.conversation.Context).
    sealed: dict[str, list[str]] = Field(default_factory=dict)


class FilterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context: FilterContext = Field(default_factory=FilterContext)
    transcript: list[TranscriptEntry] = Field(default_factory=list)
    # Dotted paths ("profile.name", "slots.*"); when given, only these survive. `*` matches one key.
    allowlist: list[str] | None = None

    @field_validator("allowlist")
    @classmethod
    def _paths(cls, value: list[str] | None) -> list[str] | None:
        for path in value or ():
            parts = path.split(".")
            if not path or "" in parts or parts[0] not in (*SECTIONS, *NEVER_LEAVE, "*"):
                # The pattern is route configuration, not conversation data: safe to echo.
                raise ValueError(f"allowlist path {path!r} must be dotted keys under profile, slots or metadata")
        return value

    @classmethod
    def from_context(
        cls, context: Context, transcript: list[TranscriptEntry], allowlist: list[str] | None = None
    ) -> FilterRequest:
        return cls(context=FilterContext.model_validate(context.model_dump()), transcript=transcript,
                   allowlist=allowlist)


class SharedContext(BaseModel):
    """What may leave: only these three sections, filtered."""

    profile: dict[str, Any] = Field(default_factory=dict)
    slots: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class FilterResult(BaseModel):
    context: SharedContext
    transcript: list[TranscriptEntry]
    receipt: list[ReceiptEntry]
