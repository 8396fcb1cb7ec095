"""Uploads: /attach/upload streams to disk with a size limit; the type comes from the content."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import secrets
from pathlib import Path

from aiohttp import BodyPartReader, web

from .api import authed_stream, ok
from .auth import Caller
from .errors import BadRequest, NotFound, TooLarge, Unavailable, UnsupportedType
from .keys import SETTINGS
from .params import Params

log = logging.getLogger(__name__)

# extension -> the Content-Type it is served with. Nothing else is ever stored or served.
TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".weba": "audio/webm",
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
}
NAME = re.compile(r"[0-9a-f]{32}(" + "|".join(re.escape(e) for e in TYPES) + ")")
SNIFF_BYTES = 64 * 1024


def sniff(head: bytes) -> str | None:
    """The extension for these leading bytes, or None when the type is not one we accept."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return ".wav"
    if head.startswith(b"OggS"):
        return ".ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return ".mp3"
    if head[4:8] == b"ftyp":
        return ".m4a" if head[8:12] in (b"M4A ", b"M4B ") else ".mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3") and b"webm" in head[:64]:
        return ".webm" if re.search(rb"V_(VP8|VP9|AV1)", head) else ".weba"
    return None


@authed_stream
async def upload(request: web.Request, params: Params, caller: Caller) -> web.Response:
    settings = request.app[SETTINGS]
    if request.content_type != "multipart/form-data":
        raise BadRequest("send the file as multipart/form-data in a field named file")
    reader = await request.multipart()
    part = await reader.next()
    while part is not None and not (isinstance(part, BodyPartReader) and part.name == "file"):
        await part.release()
        part = await reader.next()
    if part is None:
        raise BadRequest("the file field is missing")
    directory = Path(settings.upload_dir)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    stem = secrets.token_hex(16)
    partial = directory / f".{stem}.part"
    try:
        try:
            size, head = await _receive(
                part, partial, settings.max_upload_bytes, settings.upload_idle_timeout_s
            )
        except OSError as exc:
            log.warning("upload by user=%s failed to store: %s", caller.user, exc)
            error = Unavailable("the upload could not be stored (the server's disk may be full)")
            error.status = 507 if exc.errno == errno.ENOSPC else 503
            raise error from None
        if size == 0:
            raise BadRequest("the file is empty")
        ext = sniff(head)
        if ext is None:
            raise UnsupportedType("only png, jpeg, gif, webp images, common audio and video")
        await asyncio.to_thread(os.replace, partial, directory / f"{stem}{ext}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(partial.unlink)
    log.info("upload user=%s size=%d type=%s", caller.user, size, TYPES[ext])
    return ok(f"/mnt/{stem}{ext}")


async def _receive(
    part: BodyPartReader, path: Path, limit: int, idle_s: float
) -> tuple[int, bytes]:
    """Stream the part into path; stop at the limit or when the sender stalls for idle_s.
    Returns (size, leading bytes)."""
    size = 0
    head = b""
    handle = await asyncio.to_thread(open, path, "wb")
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(part.read_chunk(256 * 1024), idle_s)
            except TimeoutError:
                error = BadRequest(f"the upload stalled for {idle_s:g} seconds")
                error.status = 408
                raise error from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the file is larger than {limit} bytes")
            if len(head) < SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
            await asyncio.to_thread(handle.write, chunk)
    finally:
        await asyncio.to_thread(handle.close)
    return size, head


async def serve(request: web.Request) -> web.StreamResponse:
    """Uploaded files: public capability URLs, served with their true type, never as a page."""
    name = request.match_info["name"]
    match = NAME.fullmatch(name)
    path = Path(request.app[SETTINGS].upload_dir) / name
    if match is None or not await asyncio.to_thread(path.is_file):
        raise NotFound("no such file")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": TYPES[match.group(1)],
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Content-Disposition": "inline",
            "Cache-Control": "public, max-age=31536000, immutable",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/attach/upload", upload)
    app.router.add_get("/mnt/{name}", serve)
