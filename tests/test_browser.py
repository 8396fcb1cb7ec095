"""The browser client in Debian's Chromium (Playwright): two users, every main screen."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from .conftest import CI
from .test_cli import free_port, wait_http

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
DEADLINE_MS = 15_000


def need_browser():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        if CI:
            pytest.fail("playwright is required under CI")
        pytest.skip("playwright is not installed")
    if not Path(CHROMIUM).exists():
        if CI:
            pytest.fail("chromium is required under CI")
        pytest.skip("chromium is not installed")
    return async_playwright


def png(width=8, height=8, rgb=(200, 30, 30)) -> bytes:
    """A real PNG image, so the browser can decode and draw it."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))
        )

    header = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
    env.update(LANCHAT_PORT=str(port))
    log = open(tmp_path / "server.log", "w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "serve"], cwd=tmp_path, env=env, stderr=log
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


@pytest.fixture
async def browser():
    async_playwright = need_browser()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
            ],
        )
        yield browser
        await browser.close()


async def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


async def register(browser, base, mobile, nickname, snap=False):
    from playwright.async_api import expect

    context = await browser.new_context(locale="en-US", viewport={"width": 420, "height": 800})
    await context.grant_permissions(["microphone"], origin=base)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(base + "/")
    await expect(page.locator("[data-screen=login]")).to_be_visible(timeout=DEADLINE_MS)
    if snap:
        await shot(page, "login")
    await page.get_by_text("No account? Register").click()
    await page.fill("[data-screen=register] input[name=mobile]", mobile)
    await page.fill("[data-screen=register] input[name=passwd]", "secret-pass")
    await page.fill("[data-screen=register] input[name=nickname]", nickname)
    if snap:
        await shot(page, "register")
    await page.click("[data-screen=register] button[type=submit]")
    await expect(page.locator("nav.tabs")).to_be_visible(timeout=DEADLINE_MS)
    await page.click("[data-tab=me]")
    uid = int(await page.locator(".my-id").inner_text())
    if snap:
        await shot(page, "me")
    await page.click("[data-tab=chats]")
    return context, page, uid, errors


async def send_text(page, text):
    await page.fill(".composer textarea", text)
    await page.press(".composer textarea", "Enter")


async def test_two_users_chat_in_the_browser(server, browser):
    from playwright.async_api import expect

    ann_ctx, ann, ann_id, ann_errors = await register(
        browser, server, "13911110001", "Ann", snap=True
    )
    bob_ctx, bob, bob_id, bob_errors = await register(browser, server, "13911110002", "Bob")

    # Ann adds Bob by his id; both lists update live.
    await ann.click("[data-tab=friends]")
    await ann.fill("input[name=friend]", str(bob_id))
    await ann.get_by_role("button", name="Add friend").click()
    await expect(ann.locator(f"[data-friend='{bob_id}']")).to_be_visible(timeout=DEADLINE_MS)
    await bob.click("[data-tab=friends]")
    await expect(bob.locator(f"[data-friend='{ann_id}']")).to_be_visible(timeout=DEADLINE_MS)
    await shot(ann, "friends")

    # Text, both ways; the one with markup stays text.
    await ann.click(f"[data-friend='{bob_id}']")
    await send_text(ann, "Hello Bob")
    await bob.click("[data-tab=chats]")
    conv = bob.locator(f"[data-conv='10:{ann_id}']")
    await expect(conv.locator(".badge")).to_have_text("1", timeout=DEADLINE_MS)
    await shot(bob, "chats")
    await conv.click()
    await expect(bob.locator(".bubble .text").last).to_have_text("Hello Bob", timeout=DEADLINE_MS)
    evil = "<img src=x onerror=window.__xss=1>"
    await send_text(bob, evil)
    await expect(ann.locator(".bubble .text").last).to_have_text(evil, timeout=DEADLINE_MS)
    assert await ann.locator(".messages img[src=x]").count() == 0
    assert await ann.evaluate("window.__xss") is None

    # An emoji from the panel.
    await ann.click("[data-action=emoji]")
    await ann.locator(".emoji-panel button").first.click()
    await expect(bob.locator(".emoji-big").last).to_have_text("😀", timeout=DEADLINE_MS)

    # An image from a file.
    await ann.click("[data-action=more]")
    async with ann.expect_file_chooser() as chooser_info:
        await ann.click("[data-action=image]")
    chooser = await chooser_info.value
    await chooser.set_files({"name": "red.png", "mimeType": "image/png", "buffer": png()})
    photo = bob.locator("img.photo").last
    await expect(photo).to_have_attribute("src", photo_src_pattern(), timeout=DEADLINE_MS)
    assert await photo.evaluate("img => img.complete && img.naturalWidth") == 8

    # Voice: recorded from the (fake) microphone, click to start and to stop.
    await ann.click("[data-action=voice]")
    await expect(ann.locator(".recording")).to_be_visible(timeout=DEADLINE_MS)
    await ann.wait_for_timeout(1500)
    await ann.click("[data-action=voice]")
    audio = bob.locator(".bubble audio").last
    await expect(audio).to_have_attribute("src", voice_src_pattern(), timeout=DEADLINE_MS)
    await expect(bob.locator(".bubble.m3 small").last).to_contain_text("s")
    await shot(bob, "chat")

    # A community: Ann creates it, Bob joins by its number, they talk in it.
    await ann.click(".chat .back")
    await ann.click("[data-tab=communities]")
    await ann.fill("input[name=cname]", "Study group")
    await ann.get_by_role("button", name="Create", exact=True).click()
    room = ann.locator("[data-community]").first
    await expect(room).to_be_visible(timeout=DEADLINE_MS)
    cid = await room.get_attribute("data-community")
    await shot(ann, "communities")
    await bob.click(".chat .back")
    await bob.click("[data-tab=communities]")
    await bob.fill("input[name=community]", cid)
    await bob.get_by_role("button", name="Join").click()
    await bob.locator(f"[data-community='{cid}']").click()
    await send_text(bob, "hi all")
    await ann.locator(f"[data-community='{cid}']").click()
    await expect(ann.locator(".bubble .text").last).to_have_text("hi all", timeout=DEADLINE_MS)
    await expect(ann.locator(".row .who").last).to_have_text("Bob", timeout=DEADLINE_MS)

    # Bob goes away; Ann writes; Bob comes back and finds it.
    await bob.close()
    await ann.click(".chat .back")
    await ann.click("[data-tab=friends]")
    await ann.click(f"[data-friend='{bob_id}']")
    await send_text(ann, "while you were away")
    await expect(ann.locator(".row.mine .state")).to_have_count(0, timeout=DEADLINE_MS)  # acked
    bob = await bob_ctx.new_page()
    await bob.goto(server + "/")
    conv = bob.locator(f"[data-conv='10:{ann_id}']")
    await expect(conv.locator(".badge")).to_have_text("1", timeout=DEADLINE_MS)
    await conv.click()
    await expect(bob.locator(".bubble .text").last).to_have_text(
        "while you were away", timeout=DEADLINE_MS
    )

    assert not ann_errors and not bob_errors, (ann_errors, bob_errors)
    await ann_ctx.close()
    await bob_ctx.close()


async def test_chinese_browser_gets_chinese(server, browser):
    from playwright.async_api import expect

    context = await browser.new_context(locale="zh-CN")
    page = await context.new_page()
    await page.goto(server + "/")
    await expect(page.locator("[data-screen=login] button[type=submit]")).to_have_text("登录")
    await expect(page.locator("[data-screen=login] a")).to_have_text("没有账号？注册")
    await context.close()


async def test_client_page_headers(server):
    """The page forbids framing and inline scripts; the client needs nothing from elsewhere."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(server + "/") as resp:
        assert resp.status == 200
        csp = resp.headers["Content-Security-Policy"]
        assert (
            "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp.split("style-src")[0]
        )
        html = await resp.text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for path in Path(__file__).resolve().parent.parent.joinpath("web").rglob("*.js"):
        assert not re.search(r"""(from|import\(|fetch\()\s*["'](https?:)?//""", path.read_text())


def photo_src_pattern():
    import re

    return re.compile(r"^/mnt/[0-9a-f]{32}\.png$")


def voice_src_pattern():
    import re

    return re.compile(r"^/mnt/[0-9a-f]{32}\.(weba|ogg|m4a|wav|mp3)$")
