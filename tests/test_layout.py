"""The workflow's shape (README, "Layout"): the story (conversation.py) and its chapters, which stand on base.py and
return outcomes (outcomes.py) instead of calling one another. Read from the source, so a chapter that starts
calling another fails here, not in a review."""

from __future__ import annotations

import ast
from pathlib import Path

WORKFLOWS = Path(__file__).parent.parent / "workflows"
CHAPTERS = ("ai", "clock", "commands", "handoffs", "owners", "outbox")


def _tree(name: str) -> ast.Module:
    return ast.parse((WORKFLOWS / f"{name}.py").read_text())


def _defined(name: str) -> set[str]:
    return {n.name for n in ast.walk(_tree(name)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _called_on_self(name: str) -> set[str]:
    return {
        n.attr for n in ast.walk(_tree(name))
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
    }


def _imported(name: str) -> set[str]:
    found = set()
    for n in ast.walk(_tree(name)):
        if isinstance(n, ast.ImportFrom) and n.module:
            found.add(n.module)
        elif isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
    return found


def test_a_chapter_imports_no_other_chapter():
    for chapter in CHAPTERS:
        others = {f"workflows.{c}" for c in CHAPTERS if c != chapter} | {"workflows.conversation"}
        assert not (_imported(chapter) & others), f"workflows/{chapter}.py imports {_imported(chapter) & others}"


def test_a_chapter_calls_only_base_and_its_own_methods():
    base = _defined("base")
    elsewhere = {c: _defined(c) for c in CHAPTERS} | {"conversation": _defined("conversation")}
    for chapter in CHAPTERS:
        own = elsewhere[chapter]
        foreign = {
            attr for attr in _called_on_self(chapter) - own - base
            if any(attr in defs for other, defs in elsewhere.items() if other != chapter)
        }
        assert not foreign, (
            f"workflows/{chapter}.py calls {sorted(foreign)} of another chapter; return an outcome "
            "(workflows/outcomes.py) and let the story take the step"
        )


def test_the_checks_above_see_a_cross_call():
    # The story itself calls into every chapter: the reader must find those calls (else the tests above pass vacuously).
    story_calls = _called_on_self("conversation")
    assert {"_close", "_start_handoff", "_fall_back", "_ai_turn", "_announce_positions"} <= story_calls
    assert "_close" in _defined("commands") and "_start_handoff" in _defined("handoffs")


def test_every_outcome_is_taken_by_the_story():
    outcomes = {n.name for n in _tree("outcomes").body if isinstance(n, ast.ClassDef)}
    story = (WORKFLOWS / "conversation.py").read_text()
    untaken = {o for o in outcomes
               if f"isinstance(outcome, {o})" not in story and f"isinstance(step, {o})" not in story}
    assert outcomes and not untaken, f"outcomes no step is taken for: {sorted(untaken)}"


def test_no_workflow_module_is_far_over_500_lines():
    for path in WORKFLOWS.glob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 550, f"{path.name} has {lines} lines; split it by job (README, 'Layout')"
