"""Logging for the `baton` processes: plain lines by default, one JSON object per line with
`BATON_LOG_FORMAT=json` (for log shippers): `ts` (UTC, ISO 8601), `level`, `logger`, `message`, and `exc` when
there is a traceback. Baton's log calls carry ids, kinds and error types, never message texts or secrets."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(fmt: str | None) -> None:
    """Root logging for a `baton` process (INFO; the Temporal SDK's own at WARNING)."""
    fmt = (fmt or "text").lower()
    if fmt not in FORMATS:
        raise SystemExit(f"baton: BATON_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("temporalio").setLevel(logging.WARNING)
