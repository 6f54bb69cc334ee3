"""The handoff's summary activity on its own: filtered before anyone sees it, the model's when it writes one, the
extractive one otherwise. (End to end: tests/test_desk.py, tests/test_ai_openai.py, tests/test_two_platforms.py.)"""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import summaries
from activities.summaries import Summaries, extractive
from models.conversation import Role, SummaryRequest, TokenUsage, TranscriptEntry

CARD = "4111 1111 1111 1111"
AT = "2026-11-30T10:00:00Z"


def entry(seq: int, role: Role, text: str) -> TranscriptEntry:
    return TranscriptEntry(seq=seq, message_id=f"m{seq}", role=role, author=role.value, text=text, at=AT)


WINDOW = [
    entry(1, Role.USER, f"My card {CARD} was charged twice for order A-17"),
    entry(2, Role.AI, "I'm sorry to hear that."),
    entry(3, Role.USER, "Still nothing " + "really " * 60 + "happened"),
    entry(4, Role.USER, "I need a person"),
]


@pytest.fixture
def window(monkeypatch):
    seen = {}

    async def read_window(client, conversation_id, upto, stream=None):
        seen.update(conversation_id=conversation_id, upto=upto)
        return [e for e in WINDOW if e.seq <= upto]

    monkeypatch.setattr(summaries, "read_window", read_window)
    return seen


def request(**fields) -> SummaryRequest:
    return SummaryRequest(**{"conversation_id": "c-1", "handoff_id": "h-1", "reason": "user asked for a person",
                             "params": {"topic": "billing"}, "upto": 4, **fields})


async def test_the_extractive_summary_quotes_the_first_and_last_message_filtered_and_cut(window):
    result = await ActivityEnvironment().run(Summaries(lambda: None).summarize_handoff, request())
    assert window == {"conversation_id": "c-1", "upto": 4}
    assert result.by == "extract" and result.model_failed is None and result.usage is None
    assert result.summary == ("Handed over: user asked for a person (topic: billing). The user wrote "
                              "\u201cMy card [redacted:card] was charged twice for order A-17\u201d \u2026 "
                              "\u201cI need a person\u201d (3 messages).")
    assert extractive("", {}, []) is None
    long = extractive("", {}, [WINDOW[2]])
    assert long is not None and long.endswith("\u2026\u201d.") and len(long) < 200


async def test_the_model_writes_it_from_the_filtered_window_and_its_text_is_redacted_too(window):
    asked = {}

    async def model(transcript, reason):
        asked.update(texts=[e.text for e in transcript], reason=reason)
        return f"Charged twice on card {CARD}; wants a refund.", TokenUsage(model="m", prompt_tokens=9)

    result = await ActivityEnvironment().run(Summaries(lambda: None, model).summarize_handoff, request(upto=2))
    assert CARD not in " ".join(asked["texts"]) and "[redacted:card]" in asked["texts"][0]
    assert len(asked["texts"]) == 2 and asked["reason"] == "user asked for a person"
    assert result.by == "model" and result.summary == "Charged twice on card [redacted:card]; wants a refund."
    assert result.usage == TokenUsage(model="m", prompt_tokens=9)


@pytest.mark.parametrize("answer", ["raise", "empty"])
async def test_a_model_that_fails_leaves_the_extractive_summary(window, answer):
    async def model(transcript, reason):
        if answer == "raise":
            raise ApplicationError("the model answered 503", type="AgentUnavailable")
        return None, None

    result = await ActivityEnvironment().run(Summaries(lambda: None, model).summarize_handoff, request())
    assert result.by == "extract" and result.summary and result.summary.startswith("Handed over:")
    assert result.model_failed == ("the model answered 503" if answer == "raise" else "the model wrote no summary")
