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
                             "params": {"topic": "billing", "password": "hunter2-CANARY", "card": CARD},
                             "upto": 4, **fields})


async def test_the_extractive_summary_quotes_the_first_and_last_message_filtered_and_cut(window):
    result = await ActivityEnvironment().run(Summaries(lambda: None).summarize_handoff, request())
    assert window == {"conversation_id": "c-1", "upto": 4}
    assert result.by == "extract" and result.model_failed is None and result.usage is None
    # The params pass the filter like slots: a secret-named key is dropped, a card number redacted.
    assert "hunter2" not in result.summary and CARD not in result.summary
    assert result.summary == ("Handed over: user asked for a person (topic: billing, card: [redacted:card]). The user wrote "
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


async def test_a_conversation_handed_to_us_reads_its_window_from_the_workflow(monkeypatch):
    """Its window includes the other platform's transcript, which the stream store does not hold."""
    asked = {}

    async def read_window(client, conversation_id, upto, stream=None):
        asked["stream"] = stream
        return WINDOW

    monkeypatch.setattr(summaries, "read_window", read_window)
    store = object()
    await ActivityEnvironment().run(Summaries(lambda: None, None, lambda: store).summarize_handoff, request(peer=True))
    assert asked["stream"] is None
    await ActivityEnvironment().run(Summaries(lambda: None, None, lambda: store).summarize_handoff, request())
    assert asked["stream"] is not None


def test_a2a_replies_are_redacted_then_cut_and_never_raise():
    """Redaction may lengthen a text past the transcript's bound, and find more than 20 values: the reply is still
    recorded (cut after redacting), because raising after the call would send the user's message again."""
    from activities.a2a import Answer
    from activities.platform import _replies
    from models.conversation import MAX_TEXT

    many = " ".join(f"123-45-{6780 + i:04d}" for i in range(25)) + " " + "x" * (MAX_TEXT - 200)
    [reply] = _replies(Answer(state="TASK_STATE_INPUT_REQUIRED", task_id="t-1",
                              replies=[{"message_id": "m-1", "text": many}]))
    assert len(reply.text) == MAX_TEXT and "123-45-" not in reply.text and reply.redacted == ["national_id"]
