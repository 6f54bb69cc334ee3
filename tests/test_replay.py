"""Every committed history in tests/histories/ replays against today's workflow code without a determinism error,
and the corpus keeps up with the workflow (README, "Changing the workflow")."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests import histories_stamp
from workflows.conversation import Conversation

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
WORKFLOWS = sorted((Path(__file__).parent.parent / "workflows").glob("*.py"))


def test_the_replay_corpus_is_not_empty():
    assert len(HISTORIES) >= 3


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path):
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    result = await Replayer(workflows=[Conversation], data_converter=pydantic_data_converter).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def test_the_corpus_was_recorded_against_todays_workflow_code():
    stamp = histories_stamp.read()
    assert any(p.name.startswith(f"{stamp['corpus']}_") for p in HISTORIES), f"no history of corpus {stamp['corpus']}"
    assert stamp["workflow_code"] == histories_stamp.fingerprint(), (
        "the workflow's code changed since the replay corpus was recorded (tests/histories/STAMP). Since 1.0 a change "
        "that can alter what a running conversation does is guarded by workflow.patched and records the next corpus: "
        "python -m tests.record_histories <next prefix>. A change that cannot (a rename, a refactor that replays the "
        "whole corpus unchanged): python -m tests.record_histories --stamp. See the README, 'Changing the workflow'."
    )


def markers(history: dict) -> set[str]:
    """The patch ids a history's `core_patch` markers record."""
    found = set()
    for event in history["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if marker and marker.get("markerName") == "core_patch":
            for payload in marker["details"]["patch-data"]["payloads"]:
                found.add(json.loads(base64.b64decode(payload["data"]))["id"])
    return found


def test_the_marker_reader_reads_a_patch_marker():
    data = base64.b64encode(json.dumps({"id": "some-change", "deprecated": False}).encode()).decode()
    event = {"markerRecordedEventAttributes": {"markerName": "core_patch",
                                               "details": {"patch-data": {"payloads": [{"data": data}]}}}}
    assert markers({"events": [event]}) == {"some-change"}


def test_every_patch_the_workflow_asks_has_a_recorded_history():
    """A patch id is a constant `PATCH_... = "id"` in workflows/; some history must carry its marker."""
    patches = {m for path in WORKFLOWS for m in re.findall(r'^PATCH_\w+ = "([^"]+)"', path.read_text(), re.M)}
    recorded = {patch_id for path in HISTORIES for patch_id in markers(json.loads(path.read_text()))}
    missing = sorted(patches - recorded)
    assert not missing, f"patches with no recorded history: {missing} (python -m tests.record_histories <prefix>)"
