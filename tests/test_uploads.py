"""Uploads: type by content, size limit without leftovers, safe serving."""

from __future__ import annotations

import os
import re

import aiohttp
import pytest

NAME_RE = re.compile(r"/mnt/[0-9a-f]{32}\.png")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
GIF = b"GIF89a" + b"\x00" * 64
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 64
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64
OGG = b"OggS" + b"\x00" * 64
MP3 = b"ID3\x04\x00" + b"\x00" * 64
M4A = b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 64
MP4 = b"\x00\x00\x00\x20ftypisom" + b"\x00" * 64
WEBM_AUDIO = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + b"A_OPUS" + b"\x00" * 32
WEBM_VIDEO = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + b"V_VP8" + b"\x00" * 32


async def upload(api, token, content: bytes, filename="file.bin", field="file"):
    form = aiohttp.FormData()
    form.add_field(field, content, filename=filename, content_type="application/octet-stream")
    resp = await api.client.post(
        "/attach/upload", data=form, headers={"Authorization": f"Bearer {token}"}
    )
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (WEBP, "image/webp"),
        (WAV, "audio/wav"),
        (OGG, "audio/ogg"),
        (MP3, "audio/mpeg"),
        (M4A, "audio/mp4"),
        (MP4, "video/mp4"),
        (WEBM_AUDIO, "audio/webm"),
        (WEBM_VIDEO, "video/webm"),
    ],
)
async def test_accepted_types_are_served_with_their_true_type(api, content, ctype):
    user = await api.register()
    status, body = await upload(api, user["token"], content, filename="x.html")
    assert status == 200 and body["code"] == 0
    path = body["data"]
    assert path.startswith("/mnt/") and len(path.split("/")[-1].split(".")[0]) == 32
    resp = await api.client.get(path)  # a capability URL: no token needed
    assert resp.status == 200
    assert resp.headers["Content-Type"] == ctype
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert await resp.read() == content


@pytest.mark.parametrize(
    "content",
    [
        b"<html><script>alert(1)</script></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>',
        b"%PDF-1.4 ...",
        b"plain text",
    ],
)
async def test_other_types_are_415(api, content, settings):
    user = await api.register()
    status, body = await upload(api, user["token"], content, filename="cat.png")
    assert status == 415 and body["error"] == "unsupported_type"
    assert not os.listdir(settings.upload_dir)


async def test_over_limit_is_413_and_leaves_nothing(make_server, settings):
    api = await make_server(max_upload_bytes=1000)
    user = await api.register()
    status, body = await upload(api, user["token"], PNG + b"\x00" * 2000)
    assert status == 413 and body["error"] == "too_large"
    assert os.listdir(settings.upload_dir) == []
    status, _ = await upload(api, user["token"], PNG + b"\x00" * (1000 - len(PNG)))
    assert status == 200


async def test_empty_missing_and_not_multipart_are_400(api):
    user = await api.register()
    assert (await upload(api, user["token"], b""))[0] == 400
    status, body = await upload(api, user["token"], PNG, field="other")
    assert status == 400 and "file" in body["msg"]
    body = await api.call("/attach/upload", user["token"], status=400, name="x")
    assert body["error"] == "bad_request"


async def test_upload_needs_login(api):
    status, body = await upload(api, "bad-token", PNG)
    assert status == 401 and body["error"] == "unauthorized"


async def test_mnt_serves_only_stored_names(api, settings):
    user = await api.register()
    await upload(api, user["token"], PNG)
    os.makedirs(settings.upload_dir, exist_ok=True)
    with open(os.path.join(settings.upload_dir, "evil.html"), "w") as f:
        f.write("<script>alert(1)</script>")
    for path in ("/mnt/", "/mnt/evil.html", "/mnt/..%2fsettings", "/mnt/" + "a" * 32 + ".png"):
        resp = await api.client.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"] == "not_found"


async def test_client_file_names_are_ignored(api, settings):
    """Path traversal in the file name goes nowhere: lanchat names every file itself."""
    user = await api.register()
    for name in ("../../etc/passwd.png", "/tmp/x.png", "..\\..\\win.png"):
        status, body = await upload(api, user["token"], PNG, filename=name)
        assert status == 200 and NAME_RE.fullmatch(body["data"]), (name, body)
    assert len(os.listdir(settings.upload_dir)) == 3
    assert not os.path.exists("/tmp/x.png") or os.path.getsize("/tmp/x.png") != len(PNG)


async def test_huge_headers_are_refused(api):
    resp = await api.client.get("/healthz", headers={"X-Big": "a" * 20000})
    assert resp.status in (400, 431)


async def test_stalled_upload_is_dropped(make_server, settings):
    """A client that starts an upload and then sends nothing is cut off; no file stays."""
    import asyncio

    api = await make_server(upload_idle_timeout_s=0.5)
    user = await api.register()
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.port)
    boundary = "lanchatboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + PNG
    writer.write(
        (
            f"POST /attach/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {user['token']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + 100000}\r\n\r\n"
        ).encode()
        + head
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert b" 408 " in status_line, status_line
    writer.close()
    assert os.listdir(settings.upload_dir) == []


async def test_polyglot_is_served_as_an_image_never_a_page(api):
    """A PNG that carries HTML after its header stays an image: true type, nosniff, sandbox."""
    user = await api.register()
    polyglot = PNG + b"<html><script>alert(document.cookie)</script></html>"
    status, body = await upload(api, user["token"], polyglot, filename="x.html")
    assert status == 200 and body["data"].endswith(".png")
    resp = await api.client.get(body["data"])
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in resp.headers["Content-Security-Policy"]
