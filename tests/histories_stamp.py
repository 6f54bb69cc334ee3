"""The workflow code the replay corpus was last checked against: a hash of `workflows/*.py` and the target table
`models/targets.py` (its rows decide what the workflow does for each kind of target) as code (comments,
docstrings and layout left out), kept in tests/histories/STAMP. A change to the workflow's code fails
`test_replay.test_the_corpus_was_recorded_against_todays_workflow_code` until whoever made it decides, as the
README's "Changing the workflow" says: guard it with `workflow.patched` and record the next corpus, or (a change
that cannot alter any history, shown by the existing corpus replaying) re-stamp with
`python -m tests.record_histories --stamp`."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAMP = Path(__file__).parent / "histories" / "STAMP"


def _code(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def fingerprint() -> str:
    digest = hashlib.sha256()
    for path in [*sorted((ROOT / "workflows").glob("*.py")), ROOT / "models" / "targets.py"]:
        digest.update(path.name.encode() + b"\0" + _code(path.read_text()).encode() + b"\0")
    return digest.hexdigest()


def read() -> dict:
    return json.loads(STAMP.read_text())


def write(prefix: str) -> None:
    STAMP.write_text(json.dumps({"corpus": prefix, "workflow_code": fingerprint()}, indent=2) + "\n")
