"""The worker's wire protocol: one JSON object per line on stdin (requests) and stdout (events).

Requests (plugin -> worker)::

    {"type": "run", "id": "j1", "job": "inspect", "params": {...}}
    {"type": "cancel", "id": "j1"}
    {"type": "describe"}                      # answered by a "jobs" event with every job's schema
    {"type": "shutdown"}

Events (worker -> plugin)::

    {"type": "ready", "version": "...", "pid": 123, "python": "..."}
    {"type": "started", "id": "j1", "job": "inspect", "device": "GPU: NVIDIA H200 (140 GiB)"}
    {"type": "progress", "id": "j1", "done": 3, "total": 10, "message": "tile 3 of 10", "phase": "tiles"}
    {"type": "result", "id": "j1", "result": {...}}
    {"type": "error", "id": "j1", "error_type": "UserError", "message": "...", "user_error": true}
    {"type": "cancelled", "id": "j1", "message": "..."}
    {"type": "jobs", "jobs": [...]}

``device`` and ``phase`` are optional (a reader must accept events without them); ``phase`` is one of
:data:`backend.progress.PHASE_WORDS`' phases or "".

Logs go to stderr, never to stdout. An error event with ``"id": null`` answers a line that could
not be read as a request. Standard library only: the plugin imports this module too.
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
REQUEST_TYPES = ("run", "cancel", "describe", "shutdown")


class ProtocolError(Exception):
    """A line that is not a valid request or event."""


def encode(message: dict[str, Any]) -> str:
    """One message as one line (no embedded newlines: JSON escapes them)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"


def decode(line: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a JSON object with a string 'type'")
    return message


def decode_request(line: str) -> dict[str, Any]:
    message = decode(line)
    kind = message["type"]
    if kind not in REQUEST_TYPES:
        raise ProtocolError(f"unknown request type '{kind}'")
    if kind in ("run", "cancel") and not isinstance(message.get("id"), str):
        raise ProtocolError(f"a '{kind}' request needs a string 'id'")
    if kind == "run":
        if not isinstance(message.get("job"), str):
            raise ProtocolError("a 'run' request needs a string 'job'")
        if not isinstance(message.get("params", {}), dict):
            raise ProtocolError("'params' must be a JSON object")
    return message
