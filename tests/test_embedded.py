"""`baton dev` as a user runs it: one process tree, real ports, the SQLite file keeps conversations across restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devkit.temporal import DEV_SERVER, free_port
from runtime.settings import KEYS_FILE, read_keys_file

BATON = Path(sys.executable).parent / "baton"
CRASH = "The app crashes with an error"


class Embedded:
    def __init__(self, home: Path):
        self.home = home
        self.temporal_port, self.ui_port, self.api_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    def start(self) -> None:
        # Fresh ports on every start: a port freed by the previous run can be taken meanwhile as some
        # connection's ephemeral source port, and the restart would then fail to bind.
        self.temporal_port, self.ui_port, self.api_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "TEMPORAL_"))}
        self.process = subprocess.Popen(
            [str(BATON), "dev", "--home", str(self.home), "--temporal-port", str(self.temporal_port),
             "--ui-port", str(self.ui_port), "--api-port", str(self.api_port)],
            env=env, stdout=open(self.home.parent / "baton.out", "ab"), stderr=subprocess.STDOUT,
            # From the checkout, as `make run` does: `baton dev` then routes by config/baton.yaml.
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.wait_for_banner()

    @property
    def output(self) -> str:
        return (self.home.parent / "baton.out").read_text(errors="replace")

    def wait_for_banner(self, within: float = 90) -> None:
        """Wait as a person does: for the banner that says Baton is running, nothing else. The banner must not
        appear before `/readyz` answers 200 (the demo set-up included), so whatever is tried next works."""
        starts = self.output.count("Baton is running")
        deadline = time.monotonic() + within
        while self.output.count("Baton is running") == starts:
            assert self.process is not None and self.process.poll() is None, self.output[-3000:]
            assert time.monotonic() < deadline, f"baton dev printed no banner in {within} s:\n{self.output[-3000:]}"
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()

    def key(self) -> str:
        return read_keys_file(self.home / KEYS_FILE)["BATON_API_KEY"]

    def cli(self, *args: str) -> str:
        done = subprocess.run([str(DEV_SERVER), *args, "--address", self.address], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def embedded(tmp_path):
    e = Embedded(tmp_path / "baton-home")
    e.start()
    yield e
    if e.process and e.process.poll() is None:
        e.stop()


def wait_for_roles(http: httpx.Client, conversation: str, roles: list[str]) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        entries = http.get(f"/v1/conversations/{conversation}/transcript").json().get("entries", [])
        if [e["role"] for e in entries] == roles:
            return entries
        assert time.monotonic() < deadline, entries
        time.sleep(0.1)


def test_embedded_default_chats_survives_a_restart_and_speaks_temporal(embedded):
    assert (embedded.home / "keys.env").stat().st_mode & 0o777 == 0o600
    headers = {"Authorization": f"Bearer {embedded.key()}"}
    with httpx.Client(base_url=embedded.api, headers=headers, timeout=30) as http:
        r = http.post("/v1/conversations/e2e-1/messages", json={"message_id": "m1", "text": "Hello!"})
        assert r.status_code == 202
        wait_for_roles(http, "e2e-1", ["user", "ai"])

    # The same conversation driven with the plain Temporal CLI.
    embedded.cli("workflow", "signal-with-start", "--workflow-id", "conversation-e2e-1", "--type", "Conversation",
                 "--task-queue", "baton", "--input", '{"conversation_id": "e2e-1"}',
                 "--signal-name", "user_message", "--signal-input", '{"message_id": "cli-1", "text": "thanks"}')
    with httpx.Client(base_url=embedded.api, headers=headers, timeout=30) as http:
        wait_for_roles(http, "e2e-1", ["user", "ai", "user", "ai"])
    snapshot = json.loads(embedded.cli("workflow", "query", "--workflow-id", "conversation-e2e-1", "--name", "snapshot", "-o", "json"))
    assert snapshot["queryResult"][0]["state"] == "ai"
    listed = embedded.cli("workflow", "list", "--query", 'BatonState="ai"', "-o", "json")
    assert "conversation-e2e-1" in listed

    assert embedded.stop() == 0
    embedded.start()
    headers = {"Authorization": f"Bearer {embedded.key()}"}
    with httpx.Client(base_url=embedded.api, headers=headers, timeout=30) as http:
        assert http.get("/v1/conversations/e2e-1").json()["seq"] == 4
        assert http.post("/v1/conversations/e2e-1/messages", json={"message_id": "m5", "text": "still there?"}).status_code == 202
        entries = wait_for_roles(http, "e2e-1", ["user", "ai", "user", "ai", "user", "ai"])
        assert entries[-2]["text"] == "still there?"
        # A stream last read before the restart resumes after it: exactly the entries after its last id.
        ids = []
        with http.stream("GET", "/v1/conversations/e2e-1/events", headers={"Last-Event-ID": "4"}) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if line.startswith("id: "):
                    ids.append(int(line.removeprefix("id: ")))
                if line.startswith("event: state"):
                    break
        assert ids == [5, 6]


def test_embedded_demo_hands_a_crash_to_tech_support_and_back(embedded):
    """The walk-through of the README: a technical problem crosses the platform protocol (over loopback, to this
    install's own `tech-support` agent), the user keeps chatting in the same conversation, and is handed back."""
    headers = {"Authorization": f"Bearer {embedded.key()}"}
    with httpx.Client(base_url=embedded.api, headers=headers, timeout=30) as http:

        def say(mid: str, text: str) -> None:
            assert http.post("/v1/conversations/crash-1/messages", json={"message_id": mid, "text": text}).status_code == 202

        def wait_for_text(fragment: str) -> list[dict]:
            deadline = time.monotonic() + 30
            while True:
                entries = http.get("/v1/conversations/crash-1/transcript").json().get("entries", [])
                if any(fragment in e["text"] for e in entries):
                    return entries
                assert time.monotonic() < deadline, (fragment, entries, (embedded.home.parent / "baton.out").read_text()[-2000:])
                time.sleep(0.2)

        assert http.put("/v1/conversations/crash-1/context", json={"profile": {"name": "Ada"}}).status_code == 200
        say("m1", CRASH)
        entries = wait_for_text("I'm the tech-support assistant")
        # The user's words travelled with the handoff: tech-support starts from them instead of asking again.
        assert any("I can see you reported" in e["text"] and "crashes" in e["text"] for e in entries), entries
        snap = http.get("/v1/conversations/crash-1").json()
        assert snap["state"] == "external_agent" and snap["owner"] == "tech-support"
        say("m2", "version 4.1")
        wait_for_text("known crash")
        say("m3", "it works now, thanks")
        entries = wait_for_text("back with you")
        assert http.get("/v1/conversations/crash-1").json()["state"] == "ai"
        assert [e["role"] for e in entries].count("external_agent") == 3
        # The receiving side's conversation is visible like any other (and ended with the hand back).
        rid = snap["external"]["remote_conversation_id"]
        assert http.get(f"/v1/conversations/{rid}").json()["state"] == "closed"


def test_embedded_demo_puts_a_request_for_a_human_in_queue_general_for_the_desk(embedded):
    """The README's desk walk-through: "I want to talk to a human" waits in `general` (the demo config's `human`
    route); a live agent lists, claims, replies and releases; the AI speaks up again."""
    keys = read_keys_file(embedded.home / KEYS_FILE)
    api = {"Authorization": f"Bearer {keys['BATON_API_KEY']}"}
    with httpx.Client(base_url=embedded.api, timeout=30) as http:
        r = http.post("/v1/admin/live-agents", headers={"Authorization": f"Bearer {keys['BATON_ADMIN_KEY']}"},
                      json={"agent_id": "alice", "name": "Alice", "queues": ["general"]})
        assert r.status_code == 201, r.text
        alice = {"Authorization": f"Bearer {r.json()['token']}"}
        r = http.post("/v1/conversations/human-1/messages", headers=api,
                      json={"message_id": "m1", "text": "I want to talk to a human"})
        assert r.status_code == 202
        deadline = time.monotonic() + 30
        while not (waiting := http.get("/v1/desk/queues/general/waiting", headers=alice).json()["waiting"]):
            assert time.monotonic() < deadline, (embedded.home.parent / "baton.out").read_text()[-2000:]
            time.sleep(0.2)
        assert waiting[0]["conversation_id"] == "human-1" and waiting[0]["position"] == 1
        snap = http.get("/v1/conversations/human-1", headers=api).json()
        assert snap["pending_handoff"]["rule"] == "human"
        assert http.post("/v1/desk/conversations/human-1/claim", headers=alice).status_code == 200
        r = http.post("/v1/desk/conversations/human-1/messages", headers=alice,
                      json={"message_id": "a1", "text": "Hi, Alice here."})
        assert r.status_code == 202
        assert http.post("/v1/desk/conversations/human-1/release", headers=alice).status_code == 200
        deadline = time.monotonic() + 30
        while True:
            entries = http.get("/v1/conversations/human-1/transcript", headers=api).json()["entries"]
            if any(e["role"] == "ai" and "back with you" in e["text"] for e in entries):
                break
            assert time.monotonic() < deadline, entries
            time.sleep(0.2)
        roles = [e["role"] for e in entries]
        assert "live_agent" in roles and roles.index("live_agent") < len(roles) - 1


def test_embedded_demo_is_ready_when_it_says_so_and_routes_the_first_message_to_tech_support(tmp_path):
    """Regression (issue 9): `baton dev` printed its banner and answered /healthz before the demo's Verify & Save of
    `tech-support` had finished, so a message sent at once fell back to queue `general`. Three fresh installs in a
    row, each tried the moment the banner appears: /readyz is already 200 and the handoff goes to tech-support."""
    for attempt in range(3):
        e = Embedded(tmp_path / f"home-{attempt}")
        e.home.mkdir(parents=True)
        try:
            e.start()  # returns the moment the banner is printed
            ready = httpx.get(f"{e.api}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text
            assert ready.json()["ok"] is True and ready.json()["store"] == "open"
            headers = {"Authorization": f"Bearer {e.key()}"}
            with httpx.Client(base_url=e.api, headers=headers, timeout=30) as http:
                assert http.post(f"/v1/conversations/first-{attempt}/messages",
                                 json={"message_id": "m1", "text": CRASH}).status_code == 202
                deadline = time.monotonic() + 30
                while True:
                    audit = http.get(f"/v1/conversations/first-{attempt}/audit").json().get("entries", [])
                    kinds = [a["kind"] for a in audit]
                    if "handoff_accepted" in kinds or "handoff_failed" in kinds:
                        break
                    assert time.monotonic() < deadline, (audit, e.output[-2000:])
                    time.sleep(0.1)
                assert "handoff_failed" not in kinds, (audit, e.output[-2000:])
                routed = next(a for a in audit if a["kind"] == "handoff_routed")
                assert routed["detail"]["target"] == "external_agent:tech-support", routed
                assert http.get(f"/v1/conversations/first-{attempt}").json()["owner"] == "tech-support"
        finally:
            if e.process is not None and e.process.poll() is None:
                assert e.stop() == 0
