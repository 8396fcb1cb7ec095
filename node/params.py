"""Request parameters: one merged mapping from query, form or JSON, and typed field readers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from .errors import BadRequest, UnsupportedType

Params = Mapping[str, Any]

_MAX_BODY = 64 * 1024


async def read_params(request: web.Request) -> dict[str, Any]:
    """Query string first, then the body (form, multipart fields or a JSON object) on top."""
    params: dict[str, Any] = dict(request.query)
    if request.method not in ("POST", "PUT", "PATCH") or not request.body_exists:
        return params
    ctype = request.content_type
    if ctype == "application/json":
        raw = await request.content.read(_MAX_BODY + 1)
        if len(raw) > _MAX_BODY:
            raise BadRequest("request body too large")
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise BadRequest("body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("JSON body must be an object")
        params.update(body)
    elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, str):
                params[key] = value
    elif ctype in ("", "text/plain", "application/octet-stream"):
        pass  # no parameters in a body we cannot read; fields checks report what is missing
    else:
        raise UnsupportedType(f"unsupported request content type {ctype}")
    return params


def _present(params: Params, name: str) -> Any:
    value = params.get(name)
    if value is None or (isinstance(value, str) and value == ""):
        return None
    return value


def get_str(
    params: Params,
    name: str,
    *,
    max_len: int,
    min_len: int = 0,
    required: bool = False,
    default: str = "",
    pattern: str | None = None,
) -> str:
    value = _present(params, name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{name} must be a string")
    text = str(value)
    if "\x00" in text:
        raise BadRequest(f"{name} must not contain NUL characters")
    if not min_len <= len(text) <= max_len:
        raise BadRequest(f"{name} must be {min_len}-{max_len} characters long")
    if pattern is not None and not re.fullmatch(pattern, text):
        raise BadRequest(f"{name} has an invalid format")
    return text


def get_int(
    params: Params,
    name: str,
    *,
    lo: int = 1,
    hi: int = 2**63 - 1,
    required: bool = False,
    default: int | None = None,
) -> int | None:
    value = _present(params, name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return default
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
        number = int(value)
    else:
        raise BadRequest(f"{name} must be an integer")
    if not lo <= number <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return number


def need_int(params: Params, name: str, *, lo: int = 1, hi: int = 2**63 - 1) -> int:
    value = get_int(params, name, lo=lo, hi=hi, required=True)
    assert value is not None
    return value


def media_url(value: str, name: str) -> str:
    """Avatars and icons follow the message rule: http(s):// or /mnt/ only."""
    if value and not re.fullmatch(r"(https?://[^\s<>\"']+|/mnt/[\w.-]+)", value):
        raise BadRequest(f"{name} must be an http(s):// URL or a /mnt/ path")
    return value
