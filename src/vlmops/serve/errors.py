"""The one error type the gateway raises: an HTTP status, a stable code and a message naming the fix."""

from __future__ import annotations


class ApiError(Exception):
    """A request the gateway refuses; rendered as ``{"error": {"code", "message"}, "request_id"}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
