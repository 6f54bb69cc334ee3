"""Baton's store (activities.database, activities.registry) on SQLite and on a real PostgreSQL (devkit/postgres.py):
the registry's whole contract on both, the migration of a store from before (`.baton/agents.db`), replicas that
migrate at once, and two `baton api` processes of one install on one PostgreSQL: Verify & Save on one, the peer's
signed callbacks on the other, a replayed webhook-id recognised by the other."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from activities import database, sealing, webhooks
from activities.queues import Queues
from activities.registry import AgentIdTaken, LiveAgentIdTaken, SqlRegistry, open_registry
from activities.stream import StreamStore
from devkit.temporal import free_port
from models.conversation import Bell, Rating, State
from tests.harness import baton_env, baton_worker, eventually, settings_for, stop_processes
from tests.test_two_platforms import ADMIN, platform, remote_of, texts

BATON = Path(sys.executable).parent / "baton"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'baton.db'}"
    return request.getfixturevalue("postgres").new_database()


def test_the_registry_contract_on_both_databases(store_url):
    key = sealing.new_key()
    r = SqlRegistry(store_url, key)
    try:
        assert database.revision(r._engine) == "0001"
        info, secret = r.create_local("billing", "billing")
        with pytest.raises(AgentIdTaken):
            r.create_local("again", "billing")
        assert r.local("billing").name == "billing" and r.verifying_secrets("billing") == [secret]
        new = r.rotate_local("billing")
        assert r.verifying_secrets("billing") == [new, secret] and r.rotate_local("nobody") is None
        # An external agent may share the local one's id; saving again replaces it (upsert).
        r.save_external("billing", webhooks.generate_secret(), "https://one.example")
        second = webhooks.generate_secret()
        r.save_external("billing", second, "https://two.example", protocol="a2a", a2a={"card": "x"})
        found, sealed = r.external("billing")
        assert found.domain == "https://two.example" and found.protocol == "a2a" and found.a2a == {"card": "x"}
        assert sealed == second
        assert [(a.agent_id, a.kind) for a in r.list()] == [("billing", "local"), ("billing", "external")]
        # Links: upserted by (agent, remote id).
        r.link("billing", "rc-1", "c-1", "h-1")
        r.link("billing", "rc-1", "c-2", "h-2")
        assert r.linked("billing", "rc-1") == "c-2" and r.linked("billing", "rc-9") is None
        # Seen webhook ids: the first answer is kept.
        r.remember("billing", "w-1", '{"ok":1}')
        r.remember("billing", "w-1", '{"ok":2}')
        assert r.recall("billing", "w-1") == '{"ok":1}' and r.recall("billing", "w-2") is None
        # Live agents: the token is stored hashed and finds its agent.
        live, token = r.create_live_agent("ann", "Ann", ["general", "general"], ["de"], capacity=5)
        with pytest.raises(LiveAgentIdTaken):
            r.create_live_agent("ann", "Ann", ["general"])
        assert live.queues == ["general"] and r.live_agent_by_token(token).capacity == 5
        assert r.live_agent_by_token(token + "x") is None and r.live_agent_by_token("nope") is None
        assert [a.agent_id for a in r.list_live_agents()] == ["ann"]
        assert r.remove("billing", "external") and r.local("billing") is not None
        assert r.remove("billing") and r.list() == [] and not r.remove("billing")
    finally:
        r.close()
    # Reopened (a restart): what was stored is there; the wrong key opens no secret.
    again = SqlRegistry(store_url, key)
    assert again.live_agent_by_token(token).agent_id == "ann" and again.recall("billing", "w-1") == '{"ok":1}'
    again.create_local("other", "other")
    again.close()
    wrong = SqlRegistry(store_url, sealing.new_key())
    with pytest.raises(ValueError, match="does not open"):
        wrong.verifying_secrets("other")
    wrong.close()


def test_replicas_that_start_at_once_migrate_the_database_once(store_url):
    key = sealing.new_key()
    opened, failed = [], []

    def start():
        try:
            opened.append(SqlRegistry(store_url, key))
        except Exception as err:  # noqa: BLE001 - the assertion reports it
            failed.append(err)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failed and len(opened) == 6
    opened[0].create_live_agent("bo", "Bo", ["general"])
    assert all(r.list_live_agents()[0].agent_id == "bo" for r in opened)
    assert database.revision(opened[0]._engine) == "0001"
    for r in opened:
        r.close()


def test_a_store_from_before_is_carried_over_not_lost(tmp_path):
    """`.baton/agents.db` as Baton 1.2 and older left it: the oldest agents table (one row per id, no protocol or
    a2a column) and live agents without a capacity."""
    key = sealing.new_key()
    legacy = tmp_path / "agents.db"
    db = sqlite3.connect(legacy)
    db.executescript("""
        CREATE TABLE agents (agent_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, domain TEXT,
            secret_sealed TEXT NOT NULL, previous_secret_sealed TEXT, previous_valid_until TEXT,
            created_at TEXT NOT NULL, verified_at TEXT);
        CREATE TABLE links (agent_id TEXT NOT NULL, remote_conversation_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
            handoff_id TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (agent_id, remote_conversation_id));
        CREATE TABLE seen_webhooks (agent_id TEXT NOT NULL, webhook_id TEXT NOT NULL, response TEXT NOT NULL,
            seen_at TEXT NOT NULL, PRIMARY KEY (agent_id, webhook_id));
        CREATE TABLE live_agents (agent_id TEXT PRIMARY KEY, name TEXT NOT NULL, queues TEXT NOT NULL,
            skills TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
    """)
    secret = webhooks.generate_secret()
    db.execute("INSERT INTO agents VALUES ('remote-1', 'external', NULL, 'https://b.example', ?, NULL, NULL,"
               " '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')", (sealing.seal(key, secret),))
    db.execute("INSERT INTO links VALUES ('remote-1', 'rc-1', 'c-1', 'h-1', '2026-01-01T00:00:00+00:00')")
    from activities.registry import _token_hash
    db.execute("INSERT INTO live_agents VALUES ('ann', 'Ann', '[\"general\"]', '[]', ?, '2026-01-01T00:00:00+00:00')",
               (_token_hash("lat_legacy-token"),))
    db.commit()
    db.close()
    before = legacy.read_bytes()
    r = open_registry(None, tmp_path, key)
    try:
        assert (tmp_path / "baton.db").exists() and legacy.read_bytes() == before  # copied; the old file kept
        info, sealed = r.external("remote-1")
        assert info.protocol == "baton" and info.domain == "https://b.example" and sealed == secret
        assert r.linked("remote-1", "rc-1") == "c-1"
        assert r.live_agent_by_token("lat_legacy-token").capacity == 3
        # Re-keyed: a local agent may now share the external one's id.
        r.create_local("remote-1", "remote-1")
        assert {a.kind for a in r.list()} == {"local", "external"}
    finally:
        r.close()
    # Opened again: baton.db is the store now (the old file is not copied over it a second time).
    again = open_registry(None, tmp_path, key)
    assert {a.kind for a in again.list()} == {"local", "external"}
    again.close()


@pytest.fixture
def loopback(monkeypatch):
    monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")


def spawn_api(dev_env, settings, url: str, port: int, log: Path) -> subprocess.Popen:
    env = baton_env(dev_env.client, settings, BATON_API_PORT=str(port), BATON_PUBLIC_URL=url,
                    BATON_DATABASE_URL=settings.database_url, BATON_ALLOW_PRIVATE_NETWORKS="1",
                    # Each process its own home: the only thing the two share is the PostgreSQL database.
                    BATON_HOME=str(log.parent / f"home-{port}"))
    return subprocess.Popen([str(BATON), "api"], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


async def test_two_api_processes_of_one_install_share_one_postgresql(dev_env, postgres, tmp_path, channel, loopback):
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    # Platform A: two `baton api` processes and a worker, on one PostgreSQL database; its public URL (where
    # platform B's callbacks go) is the second process.
    settings = settings_for(f"pg-a-{uuid.uuid4().hex[:8]}", database_url=postgres.new_database(), public_url=urls[1],
                            channel_url=channel.url, channel_secret=channel.secret, demo_tech_agent="tech-support")
    registry = SqlRegistry(settings.database_url, settings.secret_key)
    procs = [spawn_api(dev_env, settings, urls[1], port, tmp_path / f"api-{port}.log") for port in ports]
    try:
        async with platform("b", dev_env.client, tmp_path) as b, baton_worker(dev_env.client, settings, registry):
            a1, a2 = (httpx.AsyncClient(base_url=u, trust_env=False, timeout=30,
                                        headers={"Authorization": f"Bearer {settings.api_key}"}) for u in urls)
            try:
                async def ready():
                    for p in procs:
                        assert p.poll() is None, [x.read_text()[-1500:] for x in tmp_path.glob("api-*.log")]
                    return all([(await c.get("/readyz")).status_code == 200 for c in (a1, a2)])
                await eventually(ready, timeout=60)
                created = await b.http.post("/v1/admin/agents/local", headers=ADMIN,
                                            json={"name": "tech-support", "agent_id": "tech-support"})
                assert created.status_code == 201, created.text
                secret = created.json()["secret"]
                # Verify & Save on the first process ...
                saved = await a1.post("/v1/admin/agents/external", headers=ADMIN,
                                      json={"agent_id": "tech-support", "secret": secret, "domain": b.url})
                assert saved.status_code == 201, saved.text
                # ... is what the second lists, and what the worker signs the handoff with.
                listed = (await a2.get("/v1/admin/agents", headers=ADMIN)).json()
                assert any(x["agent_id"] == "tech-support" and x["kind"] == "external" for x in listed["agents"]), listed
                conversation = f"pg-{uuid.uuid4().hex[:8]}"
                r = await a1.post(f"/v1/conversations/{conversation}/messages",
                                  json={"message_id": "u1", "text": "The app crashes with an error when I open it"})
                assert r.status_code == 202, r.text

                class A:  # what remote_of reads
                    async def snapshot(self, cid):
                        return (await a1.get(f"/v1/conversations/{cid}")).json()
                rid = await remote_of(A(), conversation)
                # B's agent answers through its signed callback to the second process, which verifies it with
                # the secret the first one saved.
                await channel.wait_for(lambda _: any("I'm the tech-support assistant" in t for t in texts(channel)),
                                       timeout=20)
                # A callback signed as B signs them, to the second process; the same webhook-id replayed to the
                # first is recognised there (it answers as before; handled again it would find the conversation
                # closed and fail).
                body = json.dumps({"type": "close", "remote_conversation_id": rid, "message_id": "m-close",
                                   "reason": "done"}).encode()
                headers = {**webhooks.headers(secret, "msg_pg_replay", body), "content-type": "application/json"}
                first = await a2.post("/v1/agents/tech-support/events", content=body, headers=headers)
                assert first.status_code == 202, first.text

                async def closed():
                    return (await a1.get(f"/v1/conversations/{conversation}")).json()["state"] == "closed"
                await eventually(closed)
                replayed = await a1.post("/v1/agents/tech-support/events", content=body, headers=headers)
                assert replayed.status_code == 202 and replayed.json() == first.json(), replayed.text
                assert registry.recall("tech-support", "msg_pg_replay") is not None
                # The same event under a webhook-id never seen is handled, and fails: the conversation is closed.
                fresh = {**webhooks.headers(secret, "msg_pg_fresh", body), "content-type": "application/json"}
                assert (await a1.post("/v1/agents/tech-support/events", content=body, headers=fresh)).status_code != 202
            finally:
                await a1.aclose()
                await a2.aclose()
    finally:
        stop_processes(*procs)
        registry.close()


def test_baton_store_copy_moves_a_sqlite_store_to_postgresql_and_can_run_again(tmp_path, postgres):
    key = sealing.new_key()
    sqlite_url = f"sqlite:///{tmp_path / 'baton.db'}"
    r = SqlRegistry(sqlite_url, key)
    _, secret = r.create_local("billing", "billing")
    r.save_external("remote-1", webhooks.generate_secret(), "https://b.example")
    r.link("remote-1", "rc-1", "c-1", "h-1")
    r.remember("remote-1", "w-1", '{"ok":1}')
    _, token = r.create_live_agent("ann", "Ann", ["general"], capacity=4)
    r.close()
    # Its event stream's store, beside it: a conversation waiting in "general" with its terms, one Ann helped and
    # rated, a wrap-up code, and the log (not copied: it only wakes processes running now).
    stream = StreamStore(tmp_path / "stream.db")
    waiting = Bell(conversation_id="c-1", number=1, seq=3, state=State.HANDOFF_PENDING, queue="general", at=T0,
                   waiting_since=T0, reason="wants a person", created=T0)
    stream.ring(waiting)
    Queues(stream).set_terms("c-1", 5, ["de"])
    stream.ring(Bell(conversation_id="c-2", number=2, seq=5, state=State.LIVE_AGENT, owner="ann", at=T0, created=T0,
                     rated=Rating(number=1, agent="ann", score=5, seq=4)))
    Queues(stream).wrapped_up("c-2", "ann", "release", "resolved")
    stream.close()
    target = postgres.new_database()
    home = {**os.environ, "BATON_HOME": str(tmp_path)}  # its event stream's store: <BATON_HOME>/stream.db
    for run in (1, 2):
        done = subprocess.run([str(BATON), "store", "copy", "--from", sqlite_url, "--to", target],
                              capture_output=True, text=True, timeout=60, env=home)
        assert done.returncode == 0, done.stderr
        copied = json.loads(done.stdout)["copied"]
        expected = 1 if run == 1 else 0  # the second run keeps what is there
        assert copied == {"agents": 2 * expected, "links": expected, "seen_webhooks": expected,
                          "live_agents": expected, "conversations": 2 * expected, "terms": expected,
                          "helpers": expected, "ratings": expected, "wrap_ups": expected}, copied
    pg = SqlRegistry(target, key)
    moved = StreamStore(target)
    try:
        assert pg.verifying_secrets("billing") == [secret] and pg.linked("remote-1", "rc-1") == "c-1"
        assert pg.recall("remote-1", "w-1") == '{"ok":1}' and pg.live_agent_by_token(token).capacity == 4
        # The desk finds the chat waiting where it waited, with its priority and skills, and the report its record.
        [row] = moved.waiting("general")
        assert (row.conversation_id, row.priority, row.skills, row.waiting_since) == ("c-1", 5, ["de"], T0)
        report = Queues(moved).report()
        assert report["wrap_ups"] == {"resolved": 1} and report["agents"]["ann"]["mean_rating"] == 5.0, report
        assert moved.since(0) == []
        # An install whose registry was on PostgreSQL already while its stream.db was a file (the compose file before):
        # --stream-from copies the file's rows in; the registry's are there and kept.
        old = tmp_path / "old"
        legacy = StreamStore(old / "stream.db")
        legacy.ring(waiting.model_copy(update={"conversation_id": "c-3"}))
        legacy.close()
        done = subprocess.run([str(BATON), "store", "copy", "--from", target, "--to", target, "--stream-from",
                               f"sqlite:///{old / 'stream.db'}"], capture_output=True, text=True, timeout=60, env=home)
        assert done.returncode == 0, done.stderr
        copied = json.loads(done.stdout)["copied"]
        assert copied["conversations"] == 1 and copied["agents"] == 0, copied
        assert [r.conversation_id for r in moved.waiting("general")] == ["c-1", "c-3"]
        missing = subprocess.run([str(BATON), "store", "copy", "--to", target, "--stream-from",
                                  f"sqlite:///{old / 'nothing.db'}"], capture_output=True, text=True, timeout=60,
                                 env=home)
        assert missing.returncode != 0 and "no event stream's store at" in missing.stderr, missing.stderr
    finally:
        pg.close()
        moved.close()


def test_every_migration_ships_in_the_package():
    """The wheel (and so the image) holds only the files package-data names: a chain whose folder is left out would
    migrate nothing, silently (Alembic skips a version folder that is not there)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["activities"]
    shipped = {f for g in globs for f in (root / "activities").glob(g)}
    needed = {f for f in (root / "activities" / "migrations").rglob("*") if f.suffix in (".py", ".mako")
              and "__pycache__" not in f.parts}
    assert needed and needed <= shipped, sorted(str(f) for f in needed - shipped)


def test_a_killed_test_run_leaves_no_postgresql_behind():
    """The throwaway server is the starting process's child and stops when that process dies, even by SIGKILL (a
    test run killed by a timeout left servers running while pg_ctl daemonised them)."""
    import signal as signals
    import time

    import psycopg

    owner = subprocess.Popen([sys.executable, "-c", (
        "import time; from devkit.postgres import Postgres; pg = Postgres().start(); "
        "print(pg.url(), pg.dir, flush=True); time.sleep(120)")], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1])
    try:
        url, folder = owner.stdout.readline().split()
        psycopg.connect(url, connect_timeout=5).close()  # it runs
        owner.send_signal(signals.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
            except psycopg.OperationalError:
                break  # gone
            assert time.monotonic() < deadline, "the server outlived the process that started it"
            time.sleep(0.2)
    finally:
        if owner.poll() is None:
            owner.kill()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
