"""Pure functions of a conversation's state: snapshot, UI details, what continue-as-new carries. (What the workflow
says to users is in models/notices.py.)

Deterministic and free of I/O like the workflow, but kept out of the workflow module so the sandbox passes it
through instead of recompiling it for every conversation."""

from __future__ import annotations

import re

from temporalio.common import TypedSearchAttributes

from models.conversation import (
    CARRY_AUDIT_BYTES,
    CARRY_IDS_BYTES,
    CARRY_TAIL_BYTES,
    MAX_CONTEXT_BYTES,
    CARRY_TRANSCRIPT_BYTES,
    PAGE_BYTES,
    AuditEntry,
    Context,
    ContextUpdate,
    ConversationState,
    RunSegment,
    Snapshot,
    TranscriptEntry,
    json_size,
)
from models.names import SearchAttributes

CARRY_TRANSCRIPT = 50  # entries handed to the next run on continue-as-new (older ones stay queryable there)
CARRY_MESSAGE_IDS = 2000  # de-duplication window
CARRY_AUDIT = 500
CARRY_EARLIER_RUNS = 1000  # pointers to earlier runs (transcript reachable by seq); older runs stay in Temporal


def tail(items: list, count: int, budget: int = CARRY_TAIL_BYTES) -> list:
    """The last `count` items that fit in `budget` bytes of JSON (always the last one)."""
    kept: list = []
    used = 0
    for item in reversed(items[-count:] if count else []):
        used += json_size(item)
        if kept and used > budget:
            break
        kept.append(item)
    kept.reverse()
    return kept


def page(entries: list[TranscriptEntry], after: int, limit: int, budget: int = PAGE_BYTES) -> list[TranscriptEntry]:
    """Entries after `after`, oldest first, at most `limit` and `budget` bytes (always at least one)."""
    kept: list[TranscriptEntry] = []
    used = 0
    for entry in entries:
        if entry.seq <= after:
            continue
        used += json_size(entry)
        if len(kept) >= limit or (kept and used > budget):
            break
        kept.append(entry)
    return kept


def since(entries: list[TranscriptEntry], after: int, budget: int) -> list[TranscriptEntry]:
    """All entries after `after` if they fit in `budget` bytes of JSON, else none (the reader asks for them)."""
    new: list[TranscriptEntry] = []
    for entry in reversed(entries):
        if entry.seq <= after:
            break
        new.append(entry)
    new.reverse()
    return new if new and json_size(new) <= budget else []


def newest_audit(entries: list[AuditEntry], budget: int = PAGE_BYTES) -> list[AuditEntry]:
    return tail(entries, len(entries), budget)


def merged_context(ctx: Context, update: ContextUpdate) -> Context:
    merged = ctx.model_copy(deep=True)
    for section in ("profile", "slots", "metadata"):
        patch = getattr(update, section)
        if patch:
            getattr(merged, section).update(patch)
    for section, sealed in update.sealed.items():
        merged.sealed.setdefault(section, []).append(sealed)
    return merged


def language(ctx: Context) -> str | None:
    """The user's language, as the context's profile or metadata names it (`language` or `locale`), for routing."""
    for source in (ctx.profile, ctx.metadata):
        for key in ("language", "locale"):
            if isinstance(source.get(key), str):
                return source[key]
    return None


def context_refusal(ctx: Context, update: ContextUpdate) -> str | None:
    """Why the update cannot be merged (the whole context would pass MAX_CONTEXT_BYTES), or None."""
    size = json_size(merged_context(ctx, update))
    if size > MAX_CONTEXT_BYTES:
        return (
            f"context too large: merged, the context would be {size} bytes, over the {MAX_CONTEXT_BYTES}-byte bound "
            "of a conversation's context"
        )
    return None


def carried_from(s: ConversationState) -> int:
    """The first seq the next run must hold: the tail, and whatever is still to be delivered or answered."""
    recent = tail(s.transcript, CARRY_TRANSCRIPT)
    return min([recent[0].seq if recent else s.seq + 1, *s.outbox, *(w.seq for w in s.inbox if w.seq)])


def carry_fits(s: ConversationState) -> bool:
    """The transcript to hand on is light enough (else continue-as-new waits until the channel takes the replies)."""
    keep_from = carried_from(s)
    return sum(json_size(e) for e in s.transcript if e.seq >= keep_from) <= CARRY_TRANSCRIPT_BYTES


def snapshot(s: ConversationState, busy: bool = False, rating_open: bool = False) -> Snapshot:
    ctx = s.context
    return Snapshot(
        busy=busy,
        conversation_id=s.conversation_id,
        channel=s.channel,
        state=s.state,
        owner=s.owner,
        queue=s.queue,
        seq=s.seq,
        handoffs=s.handoffs,
        pending_handoff=s.pending,
        waiting_since=s.waiting_since,
        created_at=s.created_at,
        last_activity_at=s.last_activity_at,
        closed_reason=s.closed_reason,
        context={
            "profile": ctx.profile,
            "slots": ctx.slots,
            "metadata": ctx.metadata,
            "sealed_sections": sorted(ctx.sealed),
        },
        external=s.external,
        peer=s.peer.model_dump(exclude={"transcript"}) if s.peer else None,
        desk=s.third_party_desk,
        shared_context=s.shared_context,
        summary=s.summary,
        rating_open=rating_open,
    )


def inherited_search_attributes(attrs: TypedSearchAttributes) -> dict[str, object]:
    """Baton's search attributes as a run started with them, in the form the workflow's `_publish` compares
    against: a key the run did not start with is unset (None)."""
    return {key.name: attrs.get(key) for key in SearchAttributes.ALL}


def details(s: ConversationState) -> str:
    """The Temporal UI's "current details" (markdown): what an operator looks for first."""
    lines = [
        f"**State:** {s.state.value}",
        f"**Owner:** {s.owner or '-'}",
        f"**Queue:** {s.queue or '-'}",
        f"**Messages:** {s.seq}",
        f"**Handoffs:** {s.handoffs}",
    ]
    if s.pending is not None:
        where = s.pending.target.label if s.pending.target else "routing"
        rule = f" (rule {s.pending.rule})" if s.pending.rule else ""
        lines.append(f"**Pending:** {where}{rule} until {s.pending.deadline.isoformat()}")
    if s.external is not None:
        lines.append(f"**External conversation:** {s.external.remote_conversation_id}")
    if s.peer is not None:
        lines.append(f"**Handed to us by:** {s.peer.platform} for agent {s.peer.agent_id}")
    return "\n".join(lines)


def position_worth_telling(last: int | None, now: int) -> bool:
    """Tell the user when their position improved meaningfully: near the front, or by a quarter of the way."""
    if last is None:
        return True
    if now >= last:
        return False
    return now <= 3 or last - now >= max(2, last // 4)


def normalized(text: str) -> str:
    kept = "".join(c.lower() if c.isalnum() or c.isspace() or c == "'" else " " for c in text)
    return " ".join(kept.split())


def is_cancel(text: str, phrases: list[str]) -> bool:
    """"never mind" cancels waiting: the whole message is a phrase, or starts with a multi-word phrase."""
    said = normalized(text)
    for phrase in phrases:
        p = normalized(phrase)
        if not p:
            continue
        if said == p or (" " in p and said.startswith(p + " ")):
            return True
    return False


def carry(s: ConversationState, run_id: str) -> ConversationState:
    """The state the next run starts from: everything pending, a tail of the transcript, a pointer to this run."""
    carried = s.model_copy(deep=True)
    if carried.transcript:
        carried.earlier_runs.append(
            RunSegment(run_id=run_id, first_seq=carried.transcript[0].seq, last_seq=carried.transcript[-1].seq)
        )
    # Undelivered replies and unanswered messages must stay reachable by seq in the next run.
    # The tail is bounded in bytes as well as entries; what is still to be delivered or answered is always kept.
    keep_from = carried_from(s)
    carried.transcript = [e for e in carried.transcript if e.seq >= keep_from]
    carried.recent_message_ids = tail(carried.recent_message_ids, CARRY_MESSAGE_IDS, CARRY_IDS_BYTES)
    carried.audit = tail(carried.audit, CARRY_AUDIT, CARRY_AUDIT_BYTES)
    carried.earlier_runs = carried.earlier_runs[-CARRY_EARLIER_RUNS:]
    return carried


_RATING = re.compile(r"^\s*([1-5])\s*(?:/\s*5|of 5|stars?)?\s*[.!]?\s*$", re.IGNORECASE)


def rating_in(text: str) -> int | None:
    """The score 1-5 a reply to the rating question gives ("4", "5/5", "3 stars"), or None (not a rating)."""
    found = _RATING.match(text)
    return int(found.group(1)) if found else None


def only_user_since(transcript: list[TranscriptEntry], seq: int) -> bool:
    """Whether every entry after `seq` is the user's (the question at `seq` is still the last thing said to them)."""
    for entry in reversed(transcript):
        if entry.seq <= seq:
            return True
        if entry.role.value != "user":
            return False
    return True
