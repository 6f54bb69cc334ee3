"""The two pages as a person (and a screen reader) uses them: every control found by its role and accessible name."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Locator, Page, expect

# Temporal on two shared cores: a reply can take a few seconds to come round.
expect.set_options(timeout=30_000)

# The browsers a page test can run in (fixtures of tests/conftest.py): the `browser` of a test marked with this is
# each in turn (test ids `[chromium]`, `[firefox]`); without it, Chromium.
BROWSERS = ("chromium", "firefox")
in_each_browser = pytest.mark.parametrize("browser", BROWSERS, indirect=True)


class Tab:
    """One browser tab (its own context, so its own sessionStorage), recording dialogs and script errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        # The tab's API traffic and console, printed when a test fails in it (what was asked, what came back, when).
        self.traffic: list[str] = []
        self._t0 = asyncio.get_running_loop().time()
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("console", lambda m: self._note(f"console.{m.type}: {m.text}"))
        page.on("request", lambda r: self._note(f"-> {r.method} {r.url}") if "/v1/" in r.url else None)
        page.on("response", lambda r: self._note(f"<- {r.status} {r.request.method} {r.url}") if "/v1/" in r.url
                else None)
        page.on("requestfailed", lambda r: self._note(f"!! {r.method} {r.url}: {r.failure}"))

    def _note(self, what: str) -> None:
        self.traffic.append(f"{asyncio.get_running_loop().time() - self._t0:8.3f}s {what}")
        del self.traffic[:-200]

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        asyncio.ensure_future(dialog.dismiss())

    def log(self, scope: Locator | Page | None = None) -> Locator:
        return (scope or self.page).get_by_role("log", name="Conversation")

    def entry(self, text: str, scope: Locator | Page | None = None) -> Locator:
        return self.log(scope).get_by_role("listitem").filter(has_text=text)

    def said_by(self, role: str, text: str, scope: Locator | Page | None = None) -> Locator:
        """The log's entries of one role (user, ai, external_agent, live_agent, system) holding `text`."""
        return self.log(scope).locator(f'li[data-role="{role}"]').filter(has_text=text)

    async def entries(self, scope: Locator | Page | None = None) -> list[dict]:
        """What the log shows, in order: each entry's seq, role and text."""
        return await self.log(scope).evaluate(
            """log => [...log.querySelectorAll('li[data-seq]')].map(li => ({
                seq: Number(li.dataset.seq), role: li.dataset.role, text: li.querySelector('.text').textContent}))"""
        )

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a dialog opened: {self.dialogs}"
        assert self.errors == [], f"script errors: {self.errors}"


class ChatTab(Tab):
    async def say(self, text: str) -> None:
        await self.page.get_by_role("textbox", name="Message").fill(text)
        await self.page.get_by_role("button", name="Send", exact=True).click()

    async def _session(self) -> dict:
        """The tab's demo session (created when the page loads)."""
        # A function, not an expression: the page's CSP forbids eval, which an expression predicate needs.
        await self.page.wait_for_function("() => sessionStorage.getItem('baton.demo.session') !== null")
        return await self.page.evaluate("JSON.parse(sessionStorage.getItem('baton.demo.session'))")

    async def conversation_id(self) -> str:
        return (await self._session())["conversation_id"]


class ConsoleTab(Tab):
    async def sign_in(self, token: str) -> None:
        await self.page.get_by_role("textbox", name="Agent token").fill(token)
        await self.page.get_by_role("button", name="Sign in", exact=True).click()

    def waiting(self, queue: str = "general") -> Locator:
        return self.page.get_by_role("region", name=f"Queue {queue}").get_by_role("list", name="Waiting")

    def waiting_item(self, conversation_id: str, queue: str = "general") -> Locator:
        return self.waiting(queue).get_by_role("listitem").filter(has_text=conversation_id)

    def panel(self) -> Locator:
        """The conversation on show (the others' tab panels are hidden, so names stay unique)."""
        return self.page.get_by_role("tabpanel")

    def tab(self, conversation_id: str) -> Locator:
        return self.page.get_by_role("tab", name=conversation_id)

    def button(self, name: str) -> Locator:
        return self.page.get_by_role("button", name=name, exact=True)

    async def reply(self, text: str) -> None:
        await self.page.get_by_role("textbox", name="Reply").fill(text)
        await self.button("Send").click()


@contextlib.asynccontextmanager
async def tab(browser: Browser, base_url: str, path: str, kind: type[Tab] = Tab) -> AsyncIterator:
    context = await browser.new_context(base_url=base_url)
    try:
        page = await context.new_page()
        opened = kind(page)
        await page.goto(path)
        try:
            yield opened
        except BaseException:
            print(f"---- the {path} tab's last API requests and console (seconds since it opened) ----")
            print("\n".join(opened.traffic))
            raise
    finally:
        await context.close()
