"""Secrets never reach the log: passwords, tokens (also in /chat's query string)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import aiohttp

from .test_cli import free_port, wait_http


async def test_no_password_or_token_in_log(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
    env.update(LANCHAT_PORT=str(port), LANCHAT_LOG_LEVEL="debug")
    log_path = tmp_path / "stderr.log"
    log_file = open(log_path, "w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "serve"], cwd=str(tmp_path), env=env, stderr=log_file
    )
    password, wrong, newpass = "Pa55word-secret", "Wrong-guess-123", "N3w-secret-pass"
    tokens: list[str] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        base = f"http://127.0.0.1:{port}"
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(base, timeout=timeout) as http:
            reg = await (
                await http.post(
                    "/user/register", data={"mobile": "13811112222", "passwd": password}
                )
            ).json()
            user = reg["data"]
            tokens.append(user["token"])
            await http.post("/user/login", data={"mobile": "13811112222", "passwd": wrong})
            await http.post("/user/login", json={"mobile": "13811112222", "passwd": password})
            async with http.ws_connect(
                "/chat", params={"id": str(user["id"]), "token": user["token"]}
            ) as ws:
                await ws.send_str('{"cmd":0}')
                await ws.receive(timeout=5)
            await http.post(
                "/user/update",
                data={"passwd": newpass, "oldpasswd": password, "token": user["token"]},
            )
            await http.get("/user/find", params={"id": user["id"], "token": user["token"]})
            await http.post("/user/logout", headers={"Authorization": f"Bearer {user['token']}"})
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        proc.kill()
        log_file.close()
    log = log_path.read_text()
    assert "POST /user/login" in log and "GET /chat" in log  # the log was really written
    assert "registered user=" in log
    # greppable: every connection line names the connection and the user
    assert f"connect conn=127.0.0.1:{port}/1 user={user['id']}" in log
    assert f"disconnect conn=127.0.0.1:{port}/1 user={user['id']}" in log
    for secret in (password, wrong, newpass, *tokens):
        assert secret not in log
    assert "token=" not in log
