"""Shared fixtures: real Temporal servers from the installed packages (nothing downloads), free ports."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from devkit.temporal import TEST_SERVER, start_dev_server
from models.names import SearchAttributes


@pytest_asyncio.fixture(scope="session")
async def dev_env():
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def ts_env():
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER), data_converter=pydantic_data_converter
    )
    # The time-skipping server knows no custom search attributes until told, like a fresh namespace.
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: IndexedValueType.ValueType(k.indexed_value_type) for k in SearchAttributes.ALL},
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture
def registry(tmp_path):
    """A real agent registry (SQLite) in the test's own folder."""
    from activities import sealing
    from activities.registry import SqliteRegistry

    r = SqliteRegistry(tmp_path / "agents.db", sealing.new_key())
    yield r
    r.close()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL for the session (devkit/postgres.py); each test takes a database of its own."""
    from devkit.postgres import Postgres

    with Postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def stream_target(request, tmp_path):
    """Where a test's event-stream store lives, once on each database: a SQLite file or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return tmp_path / "stream.db"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def task_queue() -> str:
    return f"baton-test-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def channel():
    """A real loopback chat channel that verifies Baton's signatures."""
    from tests.receiver import Receiver

    async with Receiver() as receiver:
        yield receiver


@pytest_asyncio.fixture
async def stack(dev_env, task_queue, channel):
    """A worker and the real API on a loopback port against the dev server, delivering to `channel`:
    yields (settings, an httpx client with the API key set)."""
    from tests.harness import baton_api, baton_worker, settings_for

    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    async with baton_worker(dev_env.client, settings), baton_api(dev_env.client, settings) as http:
        yield settings, http


CHROMIUM = Path("/usr/bin/chromium")
FIREFOX = Path("/usr/bin/firefox-esr")
# Playwright's default context asks for the light colour scheme, which Firefox ESR cannot emulate (see
# tests/firefox_bidi.py): the profile pins it instead (0 dark, 1 light, 2 the browser's theme).
FIREFOX_PREFS = {"layout.css.prefers-color-scheme.content-override": 1}


@pytest_asyncio.fixture(scope="session")
async def playwright():
    """Playwright's driver, shared by the browsers (it never downloads a browser of its own here)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        yield driver


@pytest_asyncio.fixture(scope="session")
async def chromium(playwright):
    """Debian's chromium, headless, driven by Playwright (`make test` installs the package when missing)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install -y chromium)")
    chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    yield chromium
    await chromium.close()


@pytest_asyncio.fixture(scope="session")
async def firefox(playwright, tmp_path_factory):
    """Debian's Firefox ESR, headless, driven by Playwright over WebDriver BiDi (its "moz-firefox" channel, for a
    stock Firefox) through tests/firefox_bidi.py, which bridges the one command Playwright sends that this Firefox
    lacks (`make test` installs the package when missing)."""
    if not FIREFOX.exists():
        pytest.fail(f"{FIREFOX} is missing: `make test` installs Debian's firefox-esr (apt-get install -y firefox-esr)")
    launcher = tmp_path_factory.mktemp("firefox") / "firefox-esr"
    relay = Path(__file__).with_name("firefox_bidi.py")
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{relay}" "{FIREFOX}" "$@"\n')
    launcher.chmod(0o755)
    firefox = await playwright.firefox.launch(
        channel="moz-firefox", executable_path=str(launcher), headless=True, firefox_user_prefs=FIREFOX_PREFS
    )
    yield firefox
    await firefox.close()


@pytest.fixture
def browser(request):
    """The browser a page test drives: Chromium, or each browser in turn for a test marked `@in_each_browser`
    (tests/browser.py). Each browser starts once per session, when a test first needs it."""
    return request.getfixturevalue(getattr(request, "param", "chromium"))
