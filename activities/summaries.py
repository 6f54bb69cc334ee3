"""The handoff's summary for whoever takes over (the `summarize_handoff` activity): written by the model when the AI
agent is an LLM (one extra call, bounded in time), else a short extractive one (the user's own words, cut short).

Either way it is written from the filtered transcript: the window is read from the workflow (the `ai_history`
query, not carried in the activity's input) and passes the context filter before anyone, a model included, sees
it. A model that fails costs the receiver only the model's summary: the extractive one is returned instead."""

from __future__ import annotations

from collections.abc import Callable

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.filtering import apply_filter, redact_text
from activities.routing import read_window
from activities.stream import StreamStore
from models.conversation import MAX_SUMMARY, Role, SummaryRequest, SummaryResult, TranscriptEntry
from models.filtering import FilterContext, FilterRequest
from models.names import Activities

QUOTE = 160  # characters of one user message an extractive summary quotes, at most


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def extractive(reason: str, params: dict[str, object], window: list[TranscriptEntry]) -> str | None:
    """A short summary from the filtered window without a model: why, the request's params, and what the user
    wrote first and last."""
    said = [e.text for e in window if e.role is Role.USER and e.text.strip()]
    parts = []
    if reason:
        shown = ", ".join(f"{k}: {v}" for k, v in params.items() if isinstance(v, str | int | float | bool))
        parts.append(f"Handed over: {_cut(reason, 200)}" + (f" ({_cut(shown, 200)})." if shown else "."))
    if said:
        quoted = [f"\u201c{_cut(said[0], QUOTE)}\u201d"]
        if len(said) > 1:
            quoted.append(f"\u201c{_cut(said[-1], QUOTE)}\u201d")
        joined = " \u2026 ".join(quoted)
        parts.append(f"The user wrote {joined}" + (f" ({len(said)} messages)." if len(said) > 2 else "."))
    return " ".join(parts)[:MAX_SUMMARY] or None


class Summaries:
    """`model`: the LLM agent's `summarize(transcript, reason)`, or None for the extractive summary only."""

    def __init__(self, client: Callable[[], Client | None], model: Callable | None = None,
                 stream: Callable[[], StreamStore] | None = None) -> None:
        self.client = client
        self.model = model
        self.stream = stream

    @activity.defn(name=Activities.SUMMARIZE_HANDOFF)
    async def summarize_handoff(self, req: SummaryRequest) -> SummaryResult:
        # A conversation handed to us: its window includes the other platform's transcript, which only the workflow
        # holds (the stream store has ours alone).
        window = await read_window(self.client(), req.conversation_id, req.upto, None if req.peer else self.stream)
        # The window and the request's params pass the context filter (params come from an API request, an intent
        # or a model's tool call: a secret-named key is dropped, a sensitive value redacted, like any slot).
        shown = apply_filter(FilterRequest(context=FilterContext(slots=dict(req.params)), transcript=window))
        filtered, params = shown.transcript, shown.context.slots
        reason, _ = redact_text(req.reason)
        failed = None
        if self.model is not None:
            try:
                text, usage = await self.model(filtered, reason)
            except ApplicationError as err:
                failed = _cut(str(err.message), 200)
            else:
                if text:
                    # Redacted, then cut: a redaction marker may be longer than what it replaced.
                    summary, _ = redact_text(text)
                    return SummaryResult(summary=summary[:MAX_SUMMARY], by="model", usage=usage)
                failed = "the model wrote no summary"
        return SummaryResult(summary=extractive(reason, params, filtered), by="extract", model_failed=failed)
