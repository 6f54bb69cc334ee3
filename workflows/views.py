"""Pure functions of a conversation's state: snapshot, UI details, notices, what continue-as-new carries.

Deterministic and free of I/O like the workflow, but kept out of the workflow module so the sandbox passes it
through instead of recompiling it for every conversation."""

from __future__ import annotations

from models.conversation import ConversationState, HandoffTarget, RunSegment, Snapshot

CARRY_TRANSCRIPT = 50  # entries handed to the next run on continue-as-new (older ones stay queryable there)
CARRY_MESSAGE_IDS = 2000  # de-duplication window
CARRY_AUDIT = 500


def snapshot(s: ConversationState) -> Snapshot:
    ctx = s.context
    return Snapshot(
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
    )


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
        lines.append(f"**Pending:** {s.pending.target.label} until {s.pending.deadline.isoformat()}")
    if s.external is not None:
        lines.append(f"**External conversation:** {s.external.remote_conversation_id}")
    if s.peer is not None:
        lines.append(f"**Handed to us by:** {s.peer.platform} for agent {s.peer.agent_id}")
    return "\n".join(lines)


def waiting_notice(target: HandoffTarget) -> str:
    if target.queue:
        return "I'm connecting you with a person. Please stay here; someone will be with you shortly."
    return "I'm connecting you with a specialist assistant. One moment, please."


def carry(s: ConversationState, run_id: str) -> ConversationState:
    """The state the next run starts from: everything pending, a tail of the transcript, a pointer to this run."""
    carried = s.model_copy(deep=True)
    if carried.transcript:
        carried.earlier_runs.append(
            RunSegment(run_id=run_id, first_seq=carried.transcript[0].seq, last_seq=carried.transcript[-1].seq)
        )
    # Undelivered replies and unanswered messages must stay reachable by seq in the next run.
    keep_from = min([s.seq - CARRY_TRANSCRIPT + 1, *s.outbox, *(w.seq for w in s.inbox if w.seq)])
    carried.transcript = [e for e in carried.transcript if e.seq >= keep_from]
    carried.recent_message_ids = carried.recent_message_ids[-CARRY_MESSAGE_IDS:]
    carried.audit = carried.audit[-CARRY_AUDIT:]
    return carried
