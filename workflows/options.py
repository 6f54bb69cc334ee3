"""The Conversation workflow's numbers in one table: each activity's timeouts and retries, and the bounds a run
keeps (how much the AI sees, what an envelope carries, when a run continues as new)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from models.names import Activities

DEFAULT_QUEUE = "general"
# Transcript entries the AI agent sees per turn (models.conversation: its activity reads them from the stream store)
from models.conversation import AI_HISTORY  # noqa: E402,F401

AI_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=5), maximum_attempts=4)
# Unlimited attempts within a day: a chat backend that is down for an hour still gets every message, in order.
CHANNEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=60)
)
CHANNEL_START_TO_CLOSE = timedelta(seconds=15)
# Activities heartbeat once they run past a second (the worker's interceptor): a worker that dies mid-call is noticed
# after this, not after the start-to-close timeout, and the call is retried on a live worker.
HEARTBEAT_TIMEOUT = timedelta(seconds=3)
CHANNEL_SCHEDULE_TO_CLOSE = timedelta(days=1)
# Handing over to an external agent: its 202 is the acceptance, within the handoff's SLA but never longer than a
# minute (a user should not wait five minutes for a platform that is down).
HANDOFF_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=10)
)
EXTERNAL_ACCEPT_TIMEOUT = timedelta(seconds=60)
# A user's message to an external agent that cannot be passed on within this is answered by our AI instead.
FORWARD_TIMEOUT = timedelta(minutes=2)
FILTER_RETRY = RetryPolicy(maximum_attempts=3)
ROUTE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)
POSITION_RETRY = RetryPolicy(maximum_attempts=2)
# The doorbell is small and local; a store that stays down is retried for half a minute, then the next change rings
# again (each bell carries the whole current state, so a missed one heals with the next).
BELL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_interval=timedelta(seconds=2))
BELL_TIMEOUT = timedelta(seconds=30)
RINGS_IN_FLIGHT = 2
CARRY_TO_AGENT = 50  # transcript entries an envelope carries
# A run continues as new at this many history events, well before the server suggests it (4K events): a worker
# with a cold cache (after a crash or a restart) replays each conversation's whole run, about 1.4 ms per event here
# (bench/worker_crash.py), so short runs are what lets a new worker catch up in seconds. About 20 messages to the
# AI; what a run carries on is bounded in bytes (views.carry).
RUN_EVENTS = 300
# A run with nothing to do and nothing in flight continues as new from this many events (PATCH_IDLE_CONTINUE), in the
# pause between a reply and the user's next message: at RUN_EVENTS the hand-over comes with a message and holds its
# reply back (README, "Benchmarks").
IDLE_RUN_EVENTS = 240

_DELIVERY = dict(start_to_close_timeout=CHANNEL_START_TO_CLOSE, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                 retry_policy=CHANNEL_RETRY)
# Each activity's options; a call adds its summary and, where it depends on the moment, its schedule-to-close (a
# channel delivery: a day; a handoff envelope: what is left of the SLA, at most EXTERNAL_ACCEPT_TIMEOUT; a
# forwarded message: FORWARD_TIMEOUT).
OPTIONS: dict[str, dict] = {
    Activities.AI_RESPOND: dict(start_to_close_timeout=timedelta(seconds=30), heartbeat_timeout=HEARTBEAT_TIMEOUT,
                                schedule_to_close_timeout=timedelta(minutes=2), retry_policy=AI_RETRY),
    Activities.ROUTE_HANDOFF: dict(start_to_close_timeout=timedelta(seconds=10), heartbeat_timeout=HEARTBEAT_TIMEOUT,
                                   schedule_to_close_timeout=timedelta(seconds=30), retry_policy=ROUTE_RETRY),
    Activities.FILTER_CONTEXT: dict(start_to_close_timeout=timedelta(seconds=10), heartbeat_timeout=HEARTBEAT_TIMEOUT,
                                    retry_policy=FILTER_RETRY),
    Activities.QUEUE_POSITION: dict(start_to_close_timeout=timedelta(seconds=10), heartbeat_timeout=HEARTBEAT_TIMEOUT,
                                    retry_policy=POSITION_RETRY),
    # The summary is a courtesy: two tries within 10 s, then the handoff goes on without it (the LLM's own call is
    # bounded at 6 s, and a failed model call falls back to an extractive summary within the same attempt).
    Activities.SUMMARIZE_HANDOFF: dict(start_to_close_timeout=timedelta(seconds=8),
                                       schedule_to_close_timeout=timedelta(seconds=10),
                                       retry_policy=RetryPolicy(maximum_attempts=2)),
    Activities.RING_BELL: dict(start_to_close_timeout=timedelta(seconds=5), schedule_to_close_timeout=BELL_TIMEOUT,
                               retry_policy=BELL_RETRY),
    Activities.DELIVER_HANDOFF: dict(start_to_close_timeout=CHANNEL_START_TO_CLOSE, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                                     retry_policy=HANDOFF_RETRY),
    Activities.DELIVER_TO_CHANNEL: _DELIVERY,
    Activities.DELIVER_TO_PEER: _DELIVERY,
    Activities.FORWARD_TO_AGENT: _DELIVERY,
    Activities.DELIVER_TO_THIRD_PARTY_DESK: _DELIVERY,
    Activities.FORWARD_TO_THIRD_PARTY_DESK: _DELIVERY,
}
