"""Issue 9: every input has a bound, a request past it gets a 413 or 422 that names the bound and changes nothing, and
no query answer or carried state can grow past Temporal's payload limit however long a conversation runs."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

import httpx

from api.app import create_app
from api.limits import CODEC_MAX_BODY_BYTES, CODEC_PREFIX, MAX_BODY_BYTES, MAX_JSON_DEPTH
from models.conversation import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_UPDATE_BYTES,
    MAX_TEXT,
    PAGE_BYTES,
    AuditEntry,
    ConversationState,
    Role,
    TranscriptEntry,
    json_size,
)
from tests.harness import eventually
from workflows import views

TEMPORAL_PAYLOAD_LIMIT = 2 * 1024 * 1024


def cid() -> str:
    return f"bounds-{uuid.uuid4().hex[:10]}"


async def state_of(http: httpx.AsyncClient, conversation: str) -> tuple:
    snap = (await http.get(f"/v1/conversations/{conversation}")).json()
    snap.pop("last_activity_at", None)
    transcript = (await http.get(f"/v1/conversations/{conversation}/transcript")).json()
    audit = (await http.get(f"/v1/conversations/{conversation}/audit")).json()
    return snap, transcript, audit


async def started(http: httpx.AsyncClient, channel) -> str:
    conversation = cid()
    r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "m1", "text": "Hello"})
    assert r.status_code == 202, r.text
    await eventually(lambda: _seq_at_least(http, conversation, 2))
    return conversation


async def _seq_at_least(http, conversation, seq):
    r = await http.get(f"/v1/conversations/{conversation}")
    return r.status_code == 200 and r.json()["seq"] >= seq


def body_routes(settings) -> list[tuple[str, str]]:
    """Every route of the API that takes a request body, from its OpenAPI document: (method, path template)."""
    paths = create_app(settings, client=None).openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if method in ("post", "put", "patch", "delete")
    ]


def fill(path: str, conversation: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: conversation if m.group(1) == "conversation_id" else "x1", path)


async def raw_request(http, method: str, url: str, declared: int):
    """A request that declares `declared` bytes of body and sends none, over its own connection."""
    import asyncio

    base = httpx.URL(str(http.base_url))
    reader, writer = await asyncio.open_connection(base.host, base.port)
    head = (f"{method} {url} HTTP/1.1\r\nHost: {base.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\nAuthorization: {http.headers['Authorization']}\r\n\r\n")
    writer.write(head.encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), timeout=10)
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    body = answer.split(b"\r\n\r\n", 1)[1]
    return httpx.Response(status, content=body)


def bound_of(template: str) -> int:
    """A route's body bound: the API's, or the payload codec's own (its payloads are a run's largest)."""
    return CODEC_MAX_BODY_BYTES if template.startswith(CODEC_PREFIX) else MAX_BODY_BYTES


def _bigger_than_the_body_bound(bound: int = MAX_BODY_BYTES) -> bytes:
    return b'{"message_id": "m9", "text": "' + b"a" * (bound + 10) + b'"}'


async def test_every_route_with_a_body_refuses_oversized_and_invalid_unicode_and_changes_nothing(stack, channel):
    settings, http = stack
    conversation = await started(http, channel)
    before = await state_of(http, conversation)
    routes = body_routes(settings)
    assert len(routes) >= 15, routes  # conversations, desk, admin, protocol, desk events
    lone_surrogate = b'{"message_id": "m9", "text": "\\udfff", "profile": {"name": "\\udfff"}}'
    deep = b'{"profile": ' + b'{"a": ' * (MAX_JSON_DEPTH + 5) + b"1" + b"}" * (MAX_JSON_DEPTH + 6)
    for method, template in routes:
        url = fill(template, conversation)
        json_headers = {"content-type": "application/json"}
        bound = bound_of(template)
        if bound == MAX_BODY_BYTES:
            r = await http.request(method, url, content=_bigger_than_the_body_bound(bound), headers=json_headers)
        else:
            # Megabytes the server refuses unread would reset the connection under the client's feet: the
            # declared length is what is checked first, so declare it (the client sends a few bytes).
            r = await raw_request(http, method, url, bound + 10)
        assert r.status_code == 413, (method, url, r.status_code, r.text)
        assert str(bound) in r.json()["detail"]

        if bound == MAX_BODY_BYTES:
            async def chunked():
                for _ in range(bound // 65536 + 2):
                    yield b" " * 65536

            r = await http.request(method, url, content=chunked(), headers=json_headers)
            assert r.status_code == 413, (method, url, "chunked", r.status_code, r.text)

        r = await http.request(method, url, content=lone_surrogate, headers=json_headers)
        assert r.status_code == 422, (method, url, r.status_code, r.text)
        assert "not valid Unicode" in r.json()["detail"] and "U+DFFF" in r.json()["detail"]

        r = await http.request(method, url, content=b'{"text": "\xff\xfe"}', headers=json_headers)
        assert r.status_code == 422 and "UTF-8" in r.json()["detail"], (method, url, r.text)

        r = await http.request(method, url, content=deep, headers=json_headers)
        assert r.status_code == 422 and "nested deeper" in r.json()["detail"], (method, url, r.text)
    assert await state_of(http, conversation) == before


async def test_context_updates_have_bounds_and_a_refused_one_changes_nothing(stack, channel):
    _, http = stack
    conversation = await started(http, channel)
    url = f"/v1/conversations/{conversation}/context"
    # The 3 MB profile: refused by the body bound before anything reaches Temporal.
    r = await http.put(url, json={"profile": {"notes": "x" * 3_000_000}})
    assert r.status_code == 413, r.text
    # Under the body bound, over one update's bound.
    r = await http.put(url, json={"profile": {"notes": "x" * (MAX_CONTEXT_UPDATE_BYTES + 10)}})
    assert r.status_code == 413 and str(MAX_CONTEXT_UPDATE_BYTES) in r.json()["detail"], r.text
    # A lone surrogate in the profile: 422 (it was a 500 before).
    r = await http.put(url, content=b'{"profile": {"name": "\\udfff"}}', headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    before = await state_of(http, conversation)
    # Two updates that each fit, but not together: the second is refused by the workflow's validator.
    chunk = MAX_CONTEXT_UPDATE_BYTES - 1000
    assert (await http.put(url, json={"profile": {"a": "x" * chunk}})).status_code == 200
    mid = await state_of(http, conversation)
    assert (await http.put(url, json={"metadata": {"b": "y" * chunk}})).status_code == 200
    r = await http.put(url, json={"slots": {"c": "z" * chunk}})
    assert r.status_code == 413 and "context too large" in r.json()["detail"] and str(MAX_CONTEXT_BYTES) in r.json()["detail"]
    after = await state_of(http, conversation)
    assert "c" not in after[0]["context"]["slots"]
    assert after[2]["entries"][-1]["kind"] == "context_updated"  # the refused update left no trace in the audit
    # Still readable, still taking small updates and messages.
    assert (await http.put(url, json={"slots": {"issue": "billing"}})).status_code == 200
    snap = (await http.get(f"/v1/conversations/{conversation}")).json()
    assert snap["context"]["slots"] == {"issue": "billing"} and len(snap["context"]["profile"]["a"]) == chunk
    assert before[1] == mid[1]  # updates add no transcript entries


async def test_a_conversation_with_the_largest_context_and_a_long_transcript_answers_every_query(stack, channel):
    _, http = stack
    conversation = await started(http, channel)
    url = f"/v1/conversations/{conversation}/context"
    chunk = MAX_CONTEXT_UPDATE_BYTES - 1000
    assert (await http.put(url, json={"profile": {"a": "é" * (chunk // 2)}})).status_code == 200
    assert (await http.put(url, json={"metadata": {"b": "x" * (chunk - 4000)}})).status_code == 200
    # 70 messages of 8,000 four-byte characters: 2.2 MB of text in one run, more than a payload may hold.
    count = 70
    for i in range(count):
        text = f"{i:03d} " + "😀" * (MAX_TEXT - 4)
        r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": f"big-{i}", "text": text})
        assert r.status_code == 202, r.text
    await eventually(lambda: _seq_at_least(http, conversation, 2 + 2 * count), timeout=120)
    r = await http.get(f"/v1/conversations/{conversation}")
    assert r.status_code == 200 and r.json()["seq"] >= 2 + 2 * count
    r = await http.get(f"/v1/conversations/{conversation}/audit")
    assert r.status_code == 200 and len(r.content) <= PAGE_BYTES + 4096
    seen, after, pages = [], 0, 0
    while True:
        r = await http.get(f"/v1/conversations/{conversation}/transcript", params={"after": after, "limit": 1000})
        assert r.status_code == 200, r.text
        assert len(r.content) <= PAGE_BYTES + 4096
        page = r.json()
        if not page["entries"]:
            break
        seen += [e["seq"] for e in page["entries"]]
        after, pages = page["next_after"], pages + 1
    assert seen == list(range(1, seen[-1] + 1)) and seen[-1] >= 2 + 2 * count
    assert pages >= 3  # paged by bytes, not by the 1,000-entry limit


def _entry(seq: int, text: str) -> TranscriptEntry:
    return TranscriptEntry(seq=seq, message_id=f"m-{seq}-" + "i" * 150, role=Role.USER, author="user", text=text,
                           at=datetime.now(timezone.utc))


def test_what_a_run_carries_to_the_next_stays_under_the_payload_limit():
    """The worst case of every carried part at once: largest context, 60 largest messages, the last 11 undelivered,
    a full audit and de-duplication window with the longest ids."""
    now = datetime.now(timezone.utc)
    s = ConversationState(conversation_id="c", channel="web", created_at=now, last_activity_at=now,
                          inactivity_timeout_seconds=60, handoff_sla_seconds=60)
    s.context.profile = {"a": "\x01" * (MAX_CONTEXT_BYTES // 6 - 100)}  # control characters: 6 bytes each in JSON
    s.transcript = [_entry(i, "\x01" * MAX_TEXT) for i in range(1, 61)]
    s.seq = 60
    s.outbox = list(range(1, 13))
    s.recent_message_ids = [f"{i:05d}" + "i" * 195 for i in range(3000)]
    s.audit = [AuditEntry(at=now, kind="context_updated", detail={"keys": ["k" * 100] * 20}) for _ in range(2000)]
    assert views.carry_fits(s) is False  # 60 replies of 48 KB from the oldest undelivered: CAN waits for delivery
    s.outbox = list(range(44, 61))
    assert views.carry_fits(s) is False  # 17 undelivered replies of 48 KB are over the carried transcript's bound
    s.outbox = list(range(50, 61))
    assert views.carry_fits(s) is True
    carried = views.carry(s, "run-1")
    assert json_size(carried) < TEMPORAL_PAYLOAD_LIMIT * 0.9, json_size(carried)
    # Whatever is still to be delivered is carried whole.
    assert {e.seq for e in carried.transcript} >= set(s.outbox)
    assert carried.transcript[-1].seq == 60


def test_query_pages_and_agent_tails_are_bounded_in_bytes():
    entries = [_entry(i, "😀" * MAX_TEXT) for i in range(1, 101)]
    page = views.page(entries, after=0, limit=1000)
    assert sum(json_size(e) for e in page) <= PAGE_BYTES and page[0].seq == 1
    assert views.page(entries, after=page[-1].seq, limit=1000)[0].seq == page[-1].seq + 1
    assert views.page(entries, after=0, limit=5)[-1].seq == 5
    tail = views.tail(entries, 50)
    assert tail[-1].seq == 100 and sum(json_size(e) for e in tail) <= 256 * 1024
    # A single entry over the budget still comes back: a page is never empty while entries remain.
    assert len(views.page(entries, after=0, limit=10, budget=10)) == 1
