"""Stand-in HTTP services for CLI tests: a handler's answer as JSON."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


def answer_json(handler: BaseHTTPRequestHandler, found: Any) -> None:
    """Send `found` as a JSON 200, or, when it is None, a problem-like 404 `{"detail": "Not Found"}`."""
    body = json.dumps(found if found is not None else {"detail": "Not Found"}).encode()
    handler.send_response(200 if found is not None else 404)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
