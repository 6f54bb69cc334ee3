"""The faces in a real headless Chromium (Debian's package, driven by Playwright), against real Temporal and the real
API on loopback: the chat page (`/chat`) and the agent console (`/console`), found by role and accessible name as a
screen reader finds them; the tests marked `@in_each_browser` run in Debian's Firefox ESR as well. Also the demo
session's and the pages' security at the HTTP level."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

import httpx
import pytest
from playwright.async_api import expect

from models.conversation import UserMessage
from models.names import Signals, workflow_id
from tests.browser import ChatTab, ConsoleTab, Tab, in_each_browser, tab
from tests.harness import baton_api, baton_worker, settings_for
from tests.test_embedded import CRASH, Embedded
from runtime.settings import Settings

ADMIN = {"Authorization": "Bearer ba_test_admin"}
SECRET = "s3cret-session-value-for-auth"
INJECTION = "<img src=x onerror=alert(1)><b>bold</b>"


class Dropped(Exception):
    """Raised into the app's stream by Cutter: the connection goes away mid-response."""


STREAMS = ("/demo/events", "/v1/desk/events")


class Cutter:
    """Wraps the API: when a stream's path is armed, the next bytes of an open stream there are not sent and the
    connection drops, as a proxy's idle timeout or a network blip would do. Records each stream request's
    Last-Event-ID."""

    def __init__(self, app) -> None:
        self.app = app
        self.armed: set[str] = set()
        self.cuts: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self.resumed_from: dict[str, list[str | None]] = {path: [] for path in STREAMS}

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in STREAMS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        self.resumed_from[path].append(headers.get(b"last-event-id", b"").decode() or None)

        async def cutting(message) -> None:
            if path in self.armed and message["type"] == "http.response.body" and message.get("body"):
                self.armed.discard(path)
                self.cuts[path] += 1
                raise Dropped
            await send(message)

        try:
            await self.app(scope, receive, cutting)
        except* Dropped:
            pass  # the response never completes: the server closes the connection mid-stream


@dataclass
class Demo:
    settings: Settings
    http: httpx.AsyncClient  # the chat backend's client (API key set)
    base: str
    cutter: Cutter

    async def live_agent(self, agent_id: str, queues=("general",)) -> str:
        r = await self.http.post("/v1/admin/live-agents", headers=ADMIN,
                                 json={"agent_id": agent_id, "name": agent_id.title(), "queues": list(queues)})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    async def transcript(self, conversation_id: str) -> list[dict]:
        r = await self.http.get(f"/v1/conversations/{conversation_id}/transcript", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["entries"]


@pytest.fixture
async def demo(dev_env, task_queue, registry):
    """A worker and the API with the demo pages on (as under `baton dev`), default routing: a request for a person
    waits in queue `general`."""
    settings = settings_for(task_queue, demo_pages=True)
    cutters: list[Cutter] = []

    def wrap(app):
        cutters.append(Cutter(app))
        return cutters[0]

    async with baton_worker(dev_env.client, settings, registry), baton_api(
        dev_env.client, settings, registry, wrap=wrap
    ) as http:
        yield Demo(settings, http, str(http.base_url).rstrip("/"), cutters[0])


async def shown_once_in_order(chat: Tab, demo: Demo, conversation_id: str) -> list[dict]:
    """The chat log shows the conversation's transcript exactly: every entry once, in seq order."""
    entries = await demo.transcript(conversation_id)
    await expect(chat.log().locator("li[data-seq]")).to_have_count(len(entries))
    shown = await chat.entries()
    assert [(e["seq"], e["role"], e["text"]) for e in shown] == [(e["seq"], e["role"], e["text"]) for e in entries]
    return shown


@contextlib.asynccontextmanager
async def chat_and_console(demo: Demo, browser, agent_id: str):
    """A user's chat tab and a live agent's console tab, signed in with its waiting list shown; yields
    (chat, console, the chat's conversation id)."""
    token = await demo.live_agent(agent_id)
    async with (
        tab(browser, demo.base, "/chat", ChatTab) as chat,
        tab(browser, demo.base, "/console", ConsoleTab) as console,
    ):
        await console.sign_in(token)
        await expect(console.waiting()).to_be_attached()
        console.token = token
        yield chat, console, await chat.conversation_id()


# ---- the walk-throughs -----------------------------------------------------------------------------------------


@in_each_browser
async def test_a_user_asks_for_a_person_two_agents_race_the_winner_talks_then_releases_to_the_ai(demo, browser):
    tokens = {"alice": await demo.live_agent("alice"), "bob": await demo.live_agent("bob")}
    async with (
        tab(browser, demo.base, "/chat", ChatTab) as chat,
        tab(browser, demo.base, "/console", ConsoleTab) as alice,
        tab(browser, demo.base, "/console", ConsoleTab) as bob,
    ):
        agents = {"alice": alice, "bob": bob}
        for name, console in agents.items():
            await console.sign_in(tokens[name])
            await expect(console.waiting()).to_be_attached()
            await expect(console.page.get_by_role("status").filter(has_text="Live")).to_be_visible()
        conversation = await chat.conversation_id()
        # What the chat backend knows of the user: the agent sees the name, never the session (sealed `auth`).
        r = await demo.http.put(f"/v1/conversations/{conversation}/context",
                                json={"profile": {"name": "Ada"}, "auth": {"session": SECRET}})
        assert r.status_code == 200, r.text

        await chat.say("I want to talk to a human")
        await expect(chat.entry("I want to talk to a human")).to_have_count(1)
        await expect(chat.entry("You are number 1 in the queue")).to_be_visible()

        # Both consoles list it without a reload: position, time waited (ticking), reason.
        for console in agents.values():
            item = console.waiting_item(conversation)
            await expect(item).to_be_visible()
            await expect(item).to_contain_text("No. 1")
            await expect(item).to_contain_text("user asked for a person")
        waited = alice.waiting_item(conversation).locator("time")
        first = await waited.text_content()
        await expect(waited).not_to_have_text(first or "")

        await chat.say("my order number is 4417")  # while waiting
        await expect(chat.entry("my order number is 4417")).to_have_count(1)

        # Both claim at once. (The clicks are dispatched in the page in one go: Playwright's actionability checks
        # take long enough that the winner's claim could already have taken the item off the other's list.)
        buttons = [a.waiting_item(conversation).get_by_role("button", name="Claim", exact=True) for a in agents.values()]
        for button in buttons:
            await expect(button).to_be_enabled()
        await asyncio.gather(*(button.evaluate("b => b.click()") for button in buttons))
        outcome = {}
        for name, console in agents.items():
            lost = console.page.get_by_role("alert").filter(has_text="Could not claim")
            await expect(console.tab(conversation).or_(lost)).to_be_visible()
            outcome[name] = await console.tab(conversation).count() == 1
        assert sorted(outcome.values()) == [False, True], outcome
        winner_id = next(n for n, won in outcome.items() if won)
        winner, loser = agents[winner_id], next(a for n, a in agents.items() if n != winner_id)
        await expect(loser.page.get_by_role("alert")).to_contain_text(f"{winner_id} claimed it first")
        # Claimed elsewhere: gone from both lists without a reload.
        for console in agents.values():
            await expect(console.waiting_item(conversation)).to_have_count(0)

        # The winner's conversation: the filtered context with what was withheld (never the value), and the
        # transcript including what the user wrote while waiting.
        panel = winner.panel()
        context = panel.get_by_role("region", name="Context")
        await expect(context).to_contain_text("Ada")
        await expect(context.get_by_role("listitem").filter(has_text="auth")).to_contain_text("dropped")
        await expect(winner.entry("I want to talk to a human", panel)).to_have_count(1)
        await expect(winner.entry("my order number is 4417", panel)).to_have_count(1)
        assert SECRET not in await winner.page.content()
        r = await demo.http.get(f"/v1/desk/conversations/{conversation}/transcript",
                                headers={"Authorization": f"Bearer {tokens[winner_id]}"})
        assert r.status_code == 200, r.text
        assert {"path": "auth", "action": "dropped"}.items() <= r.json()["withheld"][0].items(), r.json()["withheld"]
        assert SECRET not in r.text

        # Messages both ways, live on both pages; the AI is silent while a person owns the conversation.
        await expect(chat.entry(f"{winner_id} has joined the conversation")).to_be_visible()
        await expect(chat.page.get_by_role("status")).to_contain_text(f"{winner_id} is with you")
        await winner.reply("Hi, I can help with that order.")
        await expect(chat.entry("Hi, I can help with that order.")).to_have_count(1)
        await chat.say("Where is it now?")
        await expect(winner.entry("Where is it now?", panel)).to_have_count(1)
        await winner.reply("It ships tomorrow.")
        await expect(chat.entry("It ships tomorrow.")).to_have_count(1)
        await expect(winner.entry("It ships tomorrow.", panel)).to_have_count(1)
        shown = await chat.entries()
        joined = next(i for i, e in enumerate(shown) if "has joined" in e["text"])
        assert [e["role"] for e in shown[joined + 1:]] == ["live_agent", "user", "live_agent"], shown

        # Release: the AI speaks up again on the chat page; the console says the conversation has left.
        await winner.button("Release").click()
        back = chat.log().locator('li[data-role="ai"]').filter(has_text="back with you")
        await expect(back).to_be_visible()
        await expect(panel).to_contain_text("assistant has this conversation now")
        await expect(winner.button("Dismiss")).to_be_visible()
        await expect(winner.page.get_by_role("textbox", name="Reply")).to_be_disabled()

        shown = await shown_once_in_order(chat, demo, conversation)
        released = next(i for i, e in enumerate(shown) if "back with you" in e["text"])
        assert "ai" not in [e["role"] for e in shown[joined + 1:released]]
        for page in (chat, alice, bob):
            page.assert_clean()


@pytest.fixture
def dev(tmp_path):
    """`baton dev` as `make run` starts it: the demo chat page is on, tech-support connected."""
    embedded = Embedded(tmp_path / "baton-home")
    embedded.start()
    yield embedded
    if embedded.process and embedded.process.poll() is None:
        embedded.stop()


async def test_tech_support_takes_a_crash_and_hands_back_on_the_chat_page(dev, browser):
    async with tab(browser, dev.api, "/chat", ChatTab) as chat:
        status = chat.page.get_by_role("status")
        await chat.say(CRASH)
        tech = chat.log().locator('li[data-role="external_agent"]')
        await expect(tech.filter(has_text="I'm the tech-support assistant")).to_be_visible()
        await expect(tech.first).to_contain_text("tech-support")  # who speaks
        await expect(status).to_contain_text("chatting with tech-support")
        await chat.say("version 4.1")
        await expect(tech.filter(has_text="known crash")).to_be_visible()
        await chat.say("it works now, thanks")
        await expect(chat.log().locator('li[data-role="ai"]').filter(has_text="back with you")).to_be_visible()
        await expect(status).to_contain_text("chatting with the assistant")

        conversation = await chat.conversation_id()
        async with httpx.AsyncClient(base_url=dev.api, headers={"Authorization": f"Bearer {dev.key()}"}) as http:
            entries = (await http.get(f"/v1/conversations/{conversation}/transcript")).json()["entries"]
        await expect(chat.log().locator("li[data-seq]")).to_have_count(len(entries))
        shown = await chat.entries()
        assert [(e["seq"], e["role"], e["text"]) for e in shown] == [(e["seq"], e["role"], e["text"]) for e in entries]
        assert [e["role"] for e in shown].count("external_agent") == 3
        chat.assert_clean()


async def test_an_agent_works_two_conversations_transfers_one_to_a_named_agent_and_closes_the_other(demo, browser):
    tokens = {"fay": await demo.live_agent("fay"), "gus": await demo.live_agent("gus", queues=("vip",))}
    async with (
        tab(browser, demo.base, "/chat", ChatTab) as first,
        tab(browser, demo.base, "/chat", ChatTab) as second,
        tab(browser, demo.base, "/console", ConsoleTab) as fay,
        tab(browser, demo.base, "/console", ConsoleTab) as gus,
    ):
        for name, console in (("fay", fay), ("gus", gus)):
            await console.sign_in(tokens[name])
            await expect(console.page.get_by_role("status").filter(has_text="Live")).to_be_visible()
        ids = [await chat.conversation_id() for chat in (first, second)]
        for chat in (first, second):
            await chat.say("I want to talk to a human")
        for conversation in ids:
            await fay.waiting_item(conversation).get_by_role("button", name="Claim", exact=True).click()
            await expect(fay.tab(conversation)).to_have_attribute("aria-selected", "true")
        # One conversation on show at a time: its controls are the only ones with these names.
        await expect(fay.page.get_by_role("textbox", name="Reply")).to_have_count(1)
        await expect(fay.panel()).to_contain_text(ids[1])
        await fay.reply("Second, hello")
        await expect(second.said_by("live_agent", "Second, hello")).to_have_count(1)
        await first.say("Anyone?")  # the other tab shows it has news
        await expect(fay.tab(ids[0])).to_contain_text("new")

        await fay.tab(ids[0]).click()
        await expect(fay.said_by("user", "Anyone?", fay.panel())).to_have_count(1)
        await fay.page.get_by_role("combobox", name="Transfer to a").select_option("agent")
        await fay.page.get_by_role("textbox", name="Transfer target").fill("gus")
        await fay.button("Transfer").click()
        await expect(fay.panel()).to_contain_text("Transferred")
        await expect(fay.page.get_by_role("textbox", name="Reply")).to_be_disabled()
        # gus does not work `general`, but a transfer to him waits in his own list.
        mine = gus.page.get_by_role("region", name="Transferred to you").get_by_role("list", name="Waiting")
        await expect(mine.get_by_role("listitem").filter(has_text=ids[0])).to_be_visible()
        await mine.get_by_role("listitem").filter(has_text=ids[0]).get_by_role("button", name="Claim").click()
        await expect(gus.said_by("user", "Anyone?", gus.panel())).to_have_count(1)
        await expect(first.page.get_by_role("status")).to_contain_text("gus is with you")

        await fay.tab(ids[1]).click()
        await fay.button("Close").click()
        await expect(second.entry("This conversation has been closed.")).to_be_visible()
        await expect(fay.panel()).to_contain_text("closed")
        await fay.button("Dismiss").click()
        await expect(fay.tab(ids[1])).to_have_count(0)
        # The user of the closed conversation writes again: a new conversation, with a new session.
        await expect(second.page.get_by_role("status")).to_contain_text("has ended")
        await second.say("Hello again")
        await expect(second.said_by("user", "Hello again")).to_have_count(1)
        await expect(second.entry("This conversation has been closed.")).to_have_count(0)
        assert await second.conversation_id() != ids[1]
        for page in (first, second, fay, gus):
            page.assert_clean()


# ---- what users and agents type is text ------------------------------------------------------------------------


@in_each_browser
async def test_html_in_messages_is_shown_as_text_on_both_pages(demo, browser):
    async with chat_and_console(demo, browser, "carol") as (chat, carol, conversation):
        await chat.say("I want to talk to a human")
        await expect(carol.waiting_item(conversation)).to_be_visible()
        await chat.say(INJECTION)
        await expect(chat.entry(INJECTION).locator(".text")).to_have_text(INJECTION)
        await expect(carol.waiting_item(conversation)).to_contain_text(f"Latest: {INJECTION}")  # as text
        await carol.waiting_item(conversation).get_by_role("button", name="Claim", exact=True).click()
        panel = carol.panel()
        await expect(carol.entry(INJECTION, panel).locator(".text")).to_have_text(INJECTION)
        reply = "<script>alert(2)</script><i>italic</i>"
        await carol.reply(reply)
        await expect(chat.entry(reply).locator(".text")).to_have_text(reply)
        await expect(carol.entry(reply, panel).locator(".text")).to_have_text(reply)
        for page in (chat, carol):
            assert await page.page.locator("img, b, i").count() == 0
            assert await page.page.locator("script:not([src])").count() == 0
            page.assert_clean()  # no alert() ran


# ---- signing in, sessions and what the pages expose ------------------------------------------------------------


@in_each_browser
async def test_a_wrong_token_cannot_sign_in_and_the_right_one_is_kept_for_the_tab_only(demo, browser):
    token = await demo.live_agent("dana")
    async with tab(browser, demo.base, "/console", ConsoleTab) as console:
        urls: list[str] = []
        console.page.on("request", lambda request: urls.append(request.url))
        await console.sign_in("lat_not-a-real-token")
        await expect(console.page.get_by_role("alert")).to_contain_text("not accepted")
        await expect(console.button("Sign in")).to_be_visible()
        await expect(console.page.get_by_role("list", name="Waiting")).to_have_count(0)
        assert await console.page.evaluate("sessionStorage.getItem('baton.console.token')") is None

        await console.sign_in(token)
        await expect(console.waiting()).to_be_attached()
        await expect(console.page.get_by_text("Dana (dana)")).to_be_visible()
        await console.page.reload()
        await expect(console.waiting()).to_be_attached()  # the same tab stays signed in
        assert not any(token in url or "not-a-real" in url for url in urls), urls
        console.assert_clean()
    async with tab(browser, demo.base, "/console", ConsoleTab) as other:
        await expect(other.button("Sign in")).to_be_visible()  # another tab is not signed in


async def test_a_demo_session_reaches_only_its_own_conversation(demo):
    async with httpx.AsyncClient(base_url=demo.base, timeout=30) as anon:
        a = (await anon.post("/demo/sessions")).json()
        b = (await anon.post("/demo/sessions")).json()
        assert a["conversation_id"] != b["conversation_id"]
        assert a["session"].startswith(a["conversation_id"] + ".")

        def bearer(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        for session, text in ((a, "hello from a"), (b, "hello from b")):
            r = await anon.post("/demo/messages", headers=bearer(session["session"]),
                                json={"message_id": "m1", "text": text})
            assert r.status_code == 202 and r.json()["conversation_id"] == session["conversation_id"], r.text
        r = await anon.post("/demo/messages", headers=bearer(a["session"]), json={"message_id": "m2", "text": ""})
        assert r.status_code == 422  # the chat backend's validation

        a_mac = a["session"].rpartition(".")[2]
        forged = [
            f"{b['conversation_id']}.{a_mac}",  # another conversation with a's signature
            a["session"][:-4] + ("AAAA" if not a["session"].endswith("AAAA") else "BBBB"),
            b["conversation_id"],
            demo.settings.api_key,  # the chat-backend key is not a session
            f"chat-1.{a_mac}",
        ]
        for token in [*forged, None]:
            for method, url, body in (("GET", "/demo/events", None),
                                      ("POST", "/demo/messages", {"message_id": "x", "text": "hi"})):
                r = await anon.request(method, url, headers=bearer(token) if token else {}, json=body)
                assert r.status_code == 401, (token, url, r.status_code, r.text)

        # No demo route takes a conversation id: the session names the only one it can use.
        spec = (await anon.get("/openapi.json")).json()
        demo_paths = {p: ops for p, ops in spec["paths"].items() if p.startswith("/demo")}
        assert set(demo_paths) == {"/demo/sessions", "/demo/messages", "/demo/events"}
        for ops in demo_paths.values():
            for op in ops.values():
                assert {p["name"].lower() for p in op.get("parameters", [])} <= {"after", "last-event-id", "authorization"}

        # a's stream carries a's conversation, whatever the query says.
        async with anon.stream("GET", "/demo/events", params={"conversation_id": b["conversation_id"]},
                               headers=bearer(a["session"])) as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("data:") and '"text"' in line:
                    assert "hello from a" in line and "hello from b" not in line
                    break
    assert "hello from b" not in str(await demo.transcript(a["conversation_id"]))


async def test_the_chat_page_and_demo_sessions_exist_only_with_demo_pages(dev_env, task_queue):
    assert Settings.from_env({}).demo_pages is False
    assert Settings.from_env({"BATON_DEMO_PAGES": "1"}).demo_pages is True
    settings = settings_for(task_queue)
    async with baton_api(dev_env.client, settings) as http:
        for method, url in (("GET", "/chat"), ("POST", "/demo/sessions"), ("GET", "/demo/events"),
                            ("POST", "/demo/messages")):
            assert (await http.request(method, url)).status_code == 404, url
        page = await http.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        for asset in ("console.js", "sse.js", "ui.js", "baton.css"):
            r = await http.get(f"/static/{asset}")
            assert r.status_code == 200 and settings.api_key not in r.text, asset
        assert (await http.get("/static/app.py")).status_code == 404
        assert (await http.get("/static/..%2Fapp.py")).status_code == 404
        assert (await http.get("/v1/desk/me", headers={"Authorization": "Bearer lat_wrong"})).status_code == 401


# ---- the stream under the page ---------------------------------------------------------------------------------


async def test_the_chat_page_resumes_after_a_dropped_stream_without_gaps_or_repeats(demo, browser, dev_env):
    async with tab(browser, demo.base, "/chat", ChatTab) as chat:
        await chat.say("Hello there")
        await expect(chat.log().locator('li[data-role="ai"]')).to_have_count(1)
        conversation = await chat.conversation_id()
        seen = await chat.entries()

        # The connection drops; meanwhile the conversation goes on (a message through Temporal, and its answer).
        demo.cutter.armed.add("/demo/events")
        handle = dev_env.client.get_workflow_handle(workflow_id(conversation))
        await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="side-1", text="Said elsewhere"))
        await expect(chat.said_by("user", "Said elsewhere")).to_have_count(1)
        await expect(chat.log().locator('li[data-role="ai"]')).to_have_count(2)
        assert demo.cutter.cuts["/demo/events"] == 1
        # The page asked to resume after the last entry it had shown.
        resumed = demo.cutter.resumed_from["/demo/events"]
        assert resumed[0] is None and str(seen[-1]["seq"]) in resumed[1:], resumed
        await shown_once_in_order(chat, demo, conversation)
        chat.assert_clean()


async def test_the_console_catches_up_after_its_stream_drops(demo, browser):
    async with chat_and_console(demo, browser, "erin") as (chat, erin, conversation):
        await chat.say("I want to talk to a human")
        await erin.waiting_item(conversation).get_by_role("button", name="Claim", exact=True).click()
        panel = erin.panel()
        await expect(erin.entry("erin has joined", panel)).to_have_count(1)

        demo.cutter.armed.add("/v1/desk/events")
        await chat.say("Are you still there?")
        await expect(erin.said_by("user", "Are you still there?", panel)).to_have_count(1)
        await erin.reply("Yes, still here.")
        await expect(chat.said_by("live_agent", "Yes, still here.")).to_have_count(1)
        assert demo.cutter.cuts["/v1/desk/events"] == 1
        assert len(demo.cutter.resumed_from["/v1/desk/events"]) >= 2  # it reconnected
        entries = await demo.transcript(conversation)
        await expect(erin.log(panel).locator("li[data-seq]")).to_have_count(len(entries))
        shown = await erin.entries(panel)
        assert [(e["seq"], e["text"]) for e in shown] == [(e["seq"], e["text"]) for e in entries]
        for page in (chat, erin):
            page.assert_clean()


async def test_a_reloaded_chat_tab_keeps_its_conversation_and_a_new_tab_starts_another(demo, browser):
    async with tab(browser, demo.base, "/chat", ChatTab) as chat:
        await chat.say("Remember me")
        await expect(chat.log().locator('li[data-role="ai"]')).to_have_count(1)
        conversation = await chat.conversation_id()
        await chat.page.reload()
        await expect(chat.said_by("user", "Remember me")).to_have_count(1)
        assert await chat.conversation_id() == conversation
        await shown_once_in_order(chat, demo, conversation)
        await chat.page.get_by_role("button", name="New conversation").click()
        await expect(chat.log().get_by_role("listitem")).to_have_count(0)
        await chat.page.wait_for_function(
            "old => JSON.parse(sessionStorage.getItem('baton.demo.session')).conversation_id !== old", arg=conversation
        )
        assert re.fullmatch(r"demo-[0-9a-f]+", await chat.conversation_id())
        chat.assert_clean()


CARD = "4111 1111 1111 1111"


async def test_a_reloaded_console_reopens_its_conversations_and_names_what_was_withheld_when_received(demo, browser):
    """Reload restores the open conversations (live again: a new message appears, a reply goes out). "Withheld" also
    lists what never reached the conversation: a card number the user typed, a secret-looking context value."""
    async with chat_and_console(demo, browser, "hana") as (chat, hana, conversation):
        r = await demo.http.put(f"/v1/conversations/{conversation}/context",
                                json={"profile": {"name": "Ada", "iban": "DE89 3704 0044 0532 0130 00"}})
        assert r.status_code == 200, r.text
        await chat.say("I want to talk to a human")
        await chat.say(f"my card is {CARD}")  # while waiting; redacted before it reaches the conversation
        await expect(chat.said_by("user", "[redacted:card]")).to_have_count(1)
        await hana.waiting_item(conversation).get_by_role("button", name="Claim", exact=True).click()
        await expect(hana.tab(conversation)).to_be_visible()

        await hana.page.reload()
        await expect(hana.tab(conversation)).to_be_visible()  # reopened, without claiming again
        panel = hana.panel()
        await expect(hana.said_by("user", "[redacted:card]", panel)).to_have_count(1)
        withheld = panel.get_by_role("region", name="Context").get_by_role("listitem")
        seq = next(e["seq"] for e in await demo.transcript(conversation) if "[redacted:card]" in e["text"])
        await expect(withheld.filter(has_text=f"transcript #{seq}")).to_contain_text("card number")
        await expect(withheld.filter(has_text="profile.iban")).to_contain_text("withheld when received")
        await chat.say("Are you there?")
        await expect(hana.said_by("user", "Are you there?", panel)).to_have_count(1)
        await hana.reply("Yes, I am.")
        await expect(chat.said_by("live_agent", "Yes, I am.")).to_have_count(1)

        r = await demo.http.get(f"/v1/desk/conversations/{conversation}/transcript",
                                headers={"Authorization": f"Bearer {hana.token}"})
        assert r.status_code == 200, r.text
        paths = {w["path"]: w for w in r.json()["withheld"]}
        assert paths[f"transcript #{seq}"]["action"] == "redacted", paths
        assert "withheld when received" in paths["profile.iban"]["reason"], paths
        assert CARD not in r.text and "0532 0130" not in r.text
        assert CARD not in await hana.page.content() and CARD not in await chat.page.content()
        for page in (chat, hana):
            page.assert_clean()


# ---- queues that know: presence, offers, wrap-up and the rating ------------------------------------------------

PUSH_CONFIG = """
version: 1
wrap_up_codes: [resolved, escalated]
rating: {enabled: true, question: "How did {agent} do? Reply 1 to 5."}
intents:
  human: {keywords: ["human"], reply: "Of course, I'll bring in a person."}
queues:
  general: {assignment: push, offer_seconds: 120}
routes:
  - {name: default, to: {queue: general}}
"""


@pytest.fixture
async def push_demo(dev_env, task_queue, registry, tmp_path):
    """As `demo`, with queue `general` assigning by push, wrap-up codes and the rating on."""
    from models.config import load_config

    path = tmp_path / "push.yaml"
    path.write_text(PUSH_CONFIG)
    config = load_config(path)
    settings = settings_for(task_queue, demo_pages=True)
    async with baton_worker(dev_env.client, settings, registry, config=config), baton_api(
        dev_env.client, settings, registry, config=config
    ) as http:
        yield Demo(settings, http, str(http.base_url).rstrip("/"), None)


async def test_an_agent_goes_online_accepts_an_offer_wraps_up_and_the_user_rates_the_help(push_demo, browser):
    demo = push_demo
    token = await demo.live_agent("hal")
    async with (
        tab(browser, demo.base, "/chat", ChatTab) as chat,
        tab(browser, demo.base, "/console", ConsoleTab) as console,
    ):
        await console.sign_in(token)
        # Signing in is going online; the load is shown against the capacity.
        await expect(console.page.get_by_role("combobox", name="Status")).to_have_value("online")
        await expect(console.page.get_by_role("status").filter(has_text="0 of 3")).to_be_visible()
        conversation = await chat.conversation_id()
        await chat.say("I want to talk to a human")
        offer = console.page.get_by_role("list", name="Offers").get_by_role("listitem").filter(has_text=conversation)
        await expect(offer).to_be_visible()
        await expect(offer).to_contain_text("s left")
        await offer.get_by_role("button", name="Accept", exact=True).click()
        await expect(console.tab(conversation)).to_have_attribute("aria-selected", "true")
        await expect(chat.page.get_by_role("status")).to_contain_text("is with you")
        await expect(console.page.get_by_role("status").filter(has_text="1 of 3")).to_be_visible()
        await console.reply("Hello, Hal here.")
        await expect(chat.said_by("live_agent", "Hello, Hal here.")).to_have_count(1)
        await console.page.get_by_role("combobox", name="Wrap-up code").select_option("resolved")
        await console.button("Release").click()
        await expect(chat.entry("How did Hal do? Reply 1 to 5.")).to_be_visible()
        await chat.say("5")
        await expect(chat.entry("Thank you for your rating.")).to_be_visible()
        report = (await demo.http.get("/v1/admin/desk/report", headers=ADMIN)).json()
        assert report["wrap_ups"] == {"resolved": 1}
        await console.page.get_by_role("combobox", name="Status").select_option("away")
        await expect(console.page.get_by_role("status").filter(has_text="Away")).to_be_visible()
        r = await demo.http.get("/v1/desk/presence", headers={"Authorization": f"Bearer {token}"})
        assert r.json()["status"] == "away"
        for page in (chat, console):
            page.assert_clean()


async def test_the_console_shows_the_team_with_each_agents_status_and_load(push_demo, browser):
    demo = push_demo
    jo = await demo.live_agent("jo")
    kim = await demo.live_agent("kim")
    async with (
        tab(browser, demo.base, "/chat", ChatTab) as chat,
        tab(browser, demo.base, "/console", ConsoleTab) as jos,
        tab(browser, demo.base, "/console", ConsoleTab) as kims,
    ):
        await jos.sign_in(jo)
        team = jos.page.get_by_role("list", name="Team")
        await expect(team.get_by_role("listitem").filter(has_text="kim")).to_contain_text("Offline, 0 of 3")
        await kims.sign_in(kim)
        await expect(team.get_by_role("listitem").filter(has_text="kim")).to_contain_text("Online, 0 of 3")
        # jo steps away, so the push offer goes to kim; her load shows on jo's console.
        await jos.page.get_by_role("combobox", name="Status").select_option("away")
        await expect(kims.page.get_by_role("list", name="Team").get_by_role("listitem").filter(has_text="jo"))\
            .to_contain_text("Away, 0 of 3")
        conversation = await chat.conversation_id()
        await chat.say("I want to talk to a human")
        offer = kims.page.get_by_role("list", name="Offers").get_by_role("listitem").filter(has_text=conversation)
        await offer.get_by_role("button", name="Accept", exact=True).click()
        await expect(team.get_by_role("listitem").filter(has_text="kim")).to_contain_text("Online, 1 of 3")
        for page in (chat, jos, kims):
            page.assert_clean()


async def test_after_a_close_the_chat_page_answers_the_rating_then_starts_a_new_conversation(push_demo, browser):
    demo = push_demo
    token = await demo.live_agent("ida")
    async with (
        tab(browser, demo.base, "/chat", ChatTab) as chat,
        tab(browser, demo.base, "/console", ConsoleTab) as console,
    ):
        await console.sign_in(token)
        conversation = await chat.conversation_id()
        await chat.say("I want to talk to a human")
        offer = console.page.get_by_role("list", name="Offers").get_by_role("listitem").filter(has_text=conversation)
        await offer.get_by_role("button", name="Accept", exact=True).click()
        await expect(chat.page.get_by_role("status")).to_contain_text("is with you")
        await console.page.get_by_role("combobox", name="Wrap-up code").select_option("resolved")
        await console.button("Close").click()
        await expect(chat.entry("This conversation has been closed.")).to_be_visible()
        await expect(chat.entry("How did Ida do? Reply 1 to 5.")).to_be_visible()
        await expect(chat.page.get_by_role("status")).to_contain_text("has ended")
        # The answer goes to the closed conversation (same session, same log)...
        await chat.say("4")
        await expect(chat.entry("Thank you for your rating.")).to_be_visible()
        assert await chat.conversation_id() == conversation
        kinds = {e["kind"]: e["detail"] for e in (await demo.http.get(f"/v1/conversations/{conversation}/audit")).json()["entries"]}
        assert kinds["rated"]["agent"] == "ida" and kinds["rated"]["score"] == 4
        assert kinds["wrapped_up"]["code"] == "resolved"
        # ...and once it is answered, writing again starts a new conversation, as after any close.
        await chat.say("5")
        # The page first offers "5" as a rating (its echo shows until the 409), then starts the new conversation:
        # wait for "5" as the new conversation's stream brings it back (it has a seq), not for the first echo.
        await expect(chat.log().locator('li[data-role="user"][data-seq]').filter(has_text="5")).to_have_count(1)
        await expect(chat.said_by("user", "5")).to_have_count(1)
        await expect(chat.entry("Thank you for your rating.")).to_have_count(0)
        assert await chat.conversation_id() != conversation
        await expect(chat.log().locator('li[data-role="ai"]')).not_to_have_count(0)
        report = (await demo.http.get("/v1/admin/desk/report", headers=ADMIN)).json()
        assert report["agents"]["ida"]["ratings"] == 1
        for page in (chat, console):
            page.assert_clean()
