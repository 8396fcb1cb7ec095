"""Errors: one exception family with machine codes, shared by the HTTP API and the frames."""

from __future__ import annotations


class LanchatError(Exception):
    """A failure the client is told about: an HTTP status, a machine code and a human text."""

    status = 400
    code = "bad_request"

    def __init__(self, msg: str, code: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code


class BadRequest(LanchatError):
    status, code = 400, "bad_request"


class Unauthorized(LanchatError):
    status, code = 401, "unauthorized"


class Forbidden(LanchatError):
    status, code = 403, "forbidden"


class NotFound(LanchatError):
    status, code = 404, "not_found"


class Conflict(LanchatError):
    status, code = 409, "conflict"


class TooLarge(LanchatError):
    status, code = 413, "too_large"


class UnsupportedType(LanchatError):
    status, code = 415, "unsupported_type"


class RateLimited(LanchatError):
    status, code = 429, "rate_limited"


class Unavailable(LanchatError):
    status, code = 503, "unavailable"


def envelope(exc: LanchatError) -> dict[str, object]:
    """The failure envelope of the HTTP API."""
    return {"code": -1, "msg": exc.msg, "error": exc.code}
