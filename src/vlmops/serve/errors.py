"""The one error type the gateway raises: an HTTP status, a stable code and a message naming the fix."""

from __future__ import annotations

import json


class ApiError(Exception):
    """A request the gateway refuses; rendered as ``{"error": {"code", "message"}, "request_id"}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_json(status: int, code: str, message: str, request_id: str | None) -> bytes:
    """The gateway's error body."""
    return json.dumps({"error": {"code": code, "message": message}, "request_id": request_id}).encode()
