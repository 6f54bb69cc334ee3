"""Baton's own metrics: their names and labels, in one place (README, "Metrics"). Emitted through the Temporal SDK's
metric meter, so they are exported with the SDK's own on the same `/metrics` (runtime.metrics): from workflow code
with `workflow.metric_meter()` (the SDK leaves them out while a workflow replays, so a replay counts nothing twice),
from activities with `activity.metric_meter()`. Pure: the workflow imports it."""

from __future__ import annotations

# Counters; Prometheus shows them with the `_total` suffix (runtime.metrics sets the SDK's counters_total_suffix).
HANDOFFS = "baton_handoffs"  # {rule, target_kind, outcome}: each rung of a handoff's ladder as it ends
DELIVERIES = "baton_deliveries"  # {kind, outcome}: each delivery activity's end (the channel, envelopes, forwards)
REDACTIONS = "baton_redactions"  # {kind}: each value the context filter redacted or withheld
# Histogram (seconds): a handoff's request to its accept.
HANDOFF_WAIT = "baton_handoff_wait_seconds"

# baton_handoffs' outcome label.
ACCEPTED = "accepted"  # someone took it (a live agent's claim, an external agent's 202, a desk's `accepted`)
FAILED = "failed"  # this rung failed (its SLA passed, refused, unreachable, nobody present): the ladder goes on
GAVE_UP = "gave_up"  # the ladder ended: back to the AI (or a leave-a-message notice)
CANCELLED = "cancelled"  # the user or the backend cancelled the wait

# Gauge computed when /metrics is read (from the event stream's store): conversations waiting, per queue.
WAITING = "baton_conversations_waiting"
