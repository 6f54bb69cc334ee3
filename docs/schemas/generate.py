"""Write the JSON Schemas of the platform protocol's and the desk protocol's bodies from their pydantic models.

    .venv/bin/python -m docs.schemas.generate           # (re)write docs/schemas/**/*.json
    .venv/bin/python -m docs.schemas.generate --check   # exit 1, naming each file, if one differs from its model

tests/test_docs.py runs the same comparison, so a model change without regenerated schemas fails the suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if __package__ in (None, ""):  # run as a script: python docs/schemas/generate.py
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

from api.agents import VerifyIn, VerifyOut  # noqa: E402
from api.third_party_desk import ThirdPartyDeskEventAnswer  # noqa: E402
from api.protocol import Ack  # noqa: E402
from models.third_party_desk import ThirdPartyDeskEvent, ThirdPartyDeskEnvelope, ThirdPartyDeskUserMessage  # noqa: E402
from models.protocol import HandoffAccepted, HandoffEnvelope, PeerEvent, PeerMessage  # noqa: E402

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Path under docs/schemas/ -> the model the body is validated with (requests) or built from (answers).
SCHEMAS: dict[str, type[BaseModel]] = {
    # docs/platform-protocol.md
    "platform/verify-request.json": VerifyIn,
    "platform/verify-response.json": VerifyOut,
    "platform/handoff-envelope.json": HandoffEnvelope,
    "platform/handoff-accepted.json": HandoffAccepted,
    "platform/user-message.json": PeerMessage,
    "platform/ack.json": Ack,
    "platform/callback-event.json": PeerEvent,
    # docs/desk-protocol.md
    "desk/handoff-envelope.json": ThirdPartyDeskEnvelope,
    "desk/user-message.json": ThirdPartyDeskUserMessage,
    "desk/event.json": ThirdPartyDeskEvent,
    "desk/event-answer.json": ThirdPartyDeskEventAnswer,
}


def render(model: type[BaseModel]) -> str:
    """The schema file's text: the model's validation schema, with the dialect named."""
    schema = {"$schema": DIALECT, **model.model_json_schema()}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def generated() -> dict[str, str]:
    """Every schema file's expected text, by its path under docs/schemas/."""
    return {path: render(model) for path, model in SCHEMAS.items()}


def differences(directory: Path = HERE) -> list[str]:
    """One line per schema file that is missing or differs from its model, and per .json file no model makes."""
    expected = generated()
    found = []
    for path, text in expected.items():
        file = directory / path
        if not file.exists():
            found.append(f"{path}: missing")
        elif file.read_text(encoding="utf-8") != text:
            found.append(f"{path}: differs from {SCHEMAS[path].__module__}.{SCHEMAS[path].__name__}")
    for file in sorted(directory.rglob("*.json")):
        path = file.relative_to(directory).as_posix()
        if path not in expected:
            found.append(f"{path}: no model generates it")
    return found


def write(directory: Path = HERE) -> list[str]:
    """Write every schema file; the paths written."""
    for path, text in generated().items():
        file = directory / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text, encoding="utf-8")
    return list(SCHEMAS)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        problems = differences()
        for line in problems:
            print(f"docs/schemas/{line}", file=sys.stderr)
        return 1 if problems else 0
    if args:
        print(__doc__, file=sys.stderr)
        return 2
    for path in write():
        print(f"docs/schemas/{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
