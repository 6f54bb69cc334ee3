"""The documents in docs/ cannot drift from the code.

- Every JSON Schema in docs/schemas/ is what docs/schemas/generate.py makes from its pydantic model today.
- What the activities actually send (the platform protocol's envelope, forwarded message and callback event, the
  desk's envelope and forwarded message) validates against the documented model and round-trips to the same JSON,
  so a field added to a body without its model (and so its schema) fails here.
- Every relative link in docs/*.md and README.md reaches a file (and, for a Markdown file, the heading it names);
  every schema is linked from a document; every docs/ path cited in the code exists."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from temporalio.testing import ActivityEnvironment

from activities import webhooks
from activities.third_party_desk import ThirdPartyDeskEndpoint, ThirdPartyDesks
from activities.outbound import OutboundPolicy, Target
from activities.platform import PlatformActivities
from activities.registry import AgentInfo
from docs.schemas import generate
from models.conversation import Role, TranscriptEntry
from models.third_party_desk import ThirdPartyDeskForward, ThirdPartyDeskHandoff, ThirdPartyDeskEnvelope, ThirdPartyDeskUserMessage
from models.filtering import SharedContext
from models.protocol import (
    ForwardMessage,
    HandoffDelivery,
    HandoffEnvelope,
    PeerDelivery,
    PeerEvent,
    PeerMessage,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
# An address literal: the outbound policy checks it without a DNS lookup; nothing is ever sent to it.
NOWHERE = "http://127.0.0.1:9"
ALLOW = OutboundPolicy(allow_private=True)
SECRET = webhooks.generate_secret()


# ---- the schemas ------------------------------------------------------------------------------------------------


def test_committed_schemas_are_generated_from_the_models():
    problems = generate.differences()
    assert not problems, (
        "docs/schemas/ is out of date with the models; run `.venv/bin/python -m docs.schemas.generate` and commit "
        "the result:\n" + "\n".join(problems)
    )


def test_every_schema_is_linked_from_a_document():
    linked = {
        (md.parent / target).resolve()
        for md in _documents()
        for target, _ in _relative_links(md)
    }
    unlinked = [path for path in generate.SCHEMAS if (DOCS / "schemas" / path).resolve() not in linked]
    assert not unlinked, f"schemas no document links to: {unlinked}"


# ---- what the activities send is what the schemas describe ---------------------------------------------------


class _Capture:
    """Stands in for the signed POST: records (path, body) and answers as a willing remote would."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.sent: list[tuple[str, Any]] = []

    async def __call__(self, target: Target, path: str, body: bytes, secret: str, msg_id: str, what: str) -> Any:
        self.sent.append((path, json.loads(body)))
        return httpx.Response(202, json=self.answer, request=httpx.Request("POST", target.url_for(path)))


class _Registry:
    """The registry calls the platform activities make, for one external agent and one local agent."""

    def external(self, agent_id: str) -> tuple[AgentInfo, str]:
        return AgentInfo(agent_id=agent_id, kind="external", domain=NOWHERE, created_at=AT), SECRET

    def verifying_secrets(self, agent_id: str) -> list[str]:
        return [SECRET]

    def link(self, *args: Any) -> None:
        pass


def _transcript() -> list[TranscriptEntry]:
    return [
        TranscriptEntry(seq=1, message_id="m-1", role=Role.USER, author="user", text="it crashes", at=AT),
        TranscriptEntry(seq=2, message_id="m-2", role=Role.AI, author="ai", text="handing over", at=AT,
                        event="hand_back"),
    ]


CONTEXT = SharedContext(profile={"name": "Ada"}, slots={"issue": "crash"}, metadata={"plan": "pro"})


def _documented(model: type[BaseModel], body: Any) -> None:
    """The body validates against the documented model and says nothing the model does not (an optional field the
    body leaves out, e.g. `summary`, is one whose value would be null)."""
    dumped = model.model_validate(body).model_dump(mode="json")
    assert {k: v for k, v in dumped.items() if k in body or v is not None} == body, (
        f"{model.__name__} does not describe the body sent: {body}"
    )


async def test_the_platform_bodies_sent_are_the_documented_ones():
    capture = _Capture({"accepted": True, "remote_conversation_id": "rc-1"})
    platform = PlatformActivities(lambda: _Registry(), "https://a.example", ALLOW)
    platform._post = capture  # type: ignore[method-assign]
    run = ActivityEnvironment().run

    await run(platform.deliver_handoff, HandoffDelivery(
        agent_id="tech", handoff_id="h-1", conversation_id="c-1", reason="app crashes", context=CONTEXT,
        transcript=_transcript(), summary="The user's app crashes.",
    ))
    await run(platform.forward_to_agent, ForwardMessage(
        agent_id="tech", remote_conversation_id="rc-1", conversation_id="c-1", message_id="m-3", text="version 4.1",
    ))
    for event in (
        PeerEvent(type="message", remote_conversation_id="h-9", message_id="ai-1", text="Try restarting."),
        PeerEvent(type="hand_back", remote_conversation_id="h-9", message_id="sys-1", reason="the agent is done"),
    ):
        await run(platform.deliver_to_peer, PeerDelivery(
            agent_id="tech", callback_url=NOWHERE + "/v1/agents/tech/events", conversation_id="h-9", seq=4,
            event=event,
        ))

    paths = [path for path, _ in capture.sent]
    assert paths == ["/v1/agents/tech/handoffs", "/v1/agents/tech/conversations/rc-1/messages",
                     "/v1/agents/tech/events", "/v1/agents/tech/events"]
    envelope, message, *events = (body for _, body in capture.sent)
    _documented(HandoffEnvelope, envelope)
    _documented(PeerMessage, message)
    for event in events:
        _documented(PeerEvent, event)


async def test_the_desk_bodies_sent_are_the_documented_ones():
    capture = _Capture({})
    desks = ThirdPartyDesks({"acme": ThirdPartyDeskEndpoint("acme", NOWHERE + "/desk", SECRET)}.get, "https://a.example", ALLOW)
    desks._post = capture  # type: ignore[method-assign]
    run = ActivityEnvironment().run

    await run(desks.deliver_to_desk, ThirdPartyDeskHandoff(
        desk="acme", handoff_id="h-1", conversation_id="c-1", reason="wants a person", context=CONTEXT,
        transcript=_transcript(), summary="The user wants a person.",
    ))
    await run(desks.forward_to_desk, ThirdPartyDeskForward(
        desk="acme", handoff_id="h-1", conversation_id="c-1", message_id="m-3", text="are you there?",
    ))

    assert [path for path, _ in capture.sent] == ["/handoffs", "/messages"]
    (_, envelope), (_, message) = capture.sent
    _documented(ThirdPartyDeskEnvelope, envelope)
    _documented(ThirdPartyDeskUserMessage, message)


# ---- links ----------------------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~)")
_CITED = re.compile(r"\bdocs/[A-Za-z0-9_./-]*[A-Za-z0-9_]")


def _documents() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def _prose(md: Path) -> list[str]:
    """The file's lines outside fenced code blocks (a link-like text in an example is not a link)."""
    lines, fenced = [], False
    for line in md.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _relative_links(md: Path) -> list[tuple[str, str]]:
    """(path, fragment) of every link that is not a URL; an anchor within the file has path ''."""
    found = []
    for line in _prose(md):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # https:, mailto:, ...
            path, _, fragment = target.partition("#")
            found.append((path, fragment))
    return found


def _slugs(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    slugs = set()
    for line in _prose(md):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link's text stays
        slug = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


@pytest.mark.parametrize("md", _documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file(md: Path):
    broken = []
    for path, fragment in _relative_links(md):
        target = (md.parent / path).resolve() if path else md
        if not target.exists():
            broken.append(f"{path}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in _slugs(target):
            broken.append(f"{path}#{fragment}: no such heading in {target.relative_to(ROOT)}")
    assert not broken, f"{md.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_code_cites_only_documents_that_exist():
    missing = []
    for folder in ("models", "workflows", "activities", "workers", "api", "tests", "bench", "docs"):
        for source in sorted((ROOT / folder).rglob("*.py")):
            for cited in _CITED.findall(source.read_text(encoding="utf-8")):
                if not (ROOT / cited).exists():
                    missing.append(f"{source.relative_to(ROOT)}: {cited}")
    assert not missing, "the code cites documents that do not exist:\n" + "\n".join(missing)


EXAMPLE_SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # the documents' example secret


@pytest.mark.parametrize("name", ["platform-protocol.md", "desk-protocol.md"])
def test_the_documented_example_signatures_verify(name: str):
    """The protocol documents say their example signatures are real: each signed example (webhook-id,
    webhook-timestamp, webhook-signature, then the body line) verifies with the documented secret."""
    text = (DOCS / name).read_text()
    assert EXAMPLE_SECRET in text
    lines = text.splitlines()
    checked = 0
    for i, line in enumerate(lines):
        if not line.startswith("webhook-signature: "):
            continue
        headers = {k: v for k, v in (l.split(": ", 1) for l in lines[i - 2:i + 1])}
        if "..." in headers.get("webhook-id", "...") or "webhook-timestamp" not in headers:
            continue  # an abbreviated example
        body = next(l for l in lines[i + 1:] if l.strip())
        expected = webhooks.sign(EXAMPLE_SECRET, headers["webhook-id"], int(headers["webhook-timestamp"]), body.encode())
        assert headers["webhook-signature"] == expected, (name, headers["webhook-id"])
        checked += 1
    assert checked >= 2, (name, checked)
