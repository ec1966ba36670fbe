"""JSON logs, one object per line, carrying the correlation id of the request or event in hand."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            entry["correlation_id"] = cid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class Repeats(logging.Filter):
    """Lets through the first record of each message template of the Kafka client's loggers, then holds back its
    repeats for `window_s`, saying how many it held back on the next one it lets through. With the broker down
    aiokafka logs a failed connection on every reconnect attempt, many a second; the line that says what is
    wrong (the consumer's BrokerSilent) drowned among them."""

    def __init__(self, prefix: str = "aiokafka", window_s: float = 60.0) -> None:
        super().__init__()
        self.prefix, self.window_s = prefix, window_s
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # (logger, template) -> (let through at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        shown_at, held = self._seen.get(key, (-self.window_s, 0))
        if now - shown_at < self.window_s:
            self._seen[key] = (shown_at, held + 1)
            return False
        if len(self._seen) > 1000:  # templates are few; forget them all rather than grow
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like this in the last {self.window_s:g} s)"
        return True


def configure(service: str, level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Repeats())
    if as_json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
