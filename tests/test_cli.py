"""The command line: settings from flags and environment, clean start-up failures, SIGTERM."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from node.settings import Settings, SettingsError, build

from .conftest import need_mysql


def lanchat(*args: str, env: dict[str, str] | None = None, cwd: str | None = None, timeout=30):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_defaults():
    s = build({}, {})
    assert (s.host, s.port, s.db, s.bus, s.udp_port) == (
        "127.0.0.1",
        8080,
        "sqlite:///data/lanchat.db",
        "local",
        3000,
    )
    assert s.node_id == "127.0.0.1:8080" and s.max_upload_bytes == 10485760


def test_flags_win_over_environment():
    s = build({"port": "9000"}, {"LANCHAT_PORT": "9100", "LANCHAT_UPLOAD_DIR": "/srv/up"})
    assert s.port == 9000 and s.upload_dir == "/srv/up"


def test_allowed_origins_is_a_list():
    s = build({}, {"LANCHAT_ALLOWED_ORIGINS": "http://a.lan:8080, https://b.lan"})
    assert s.allowed_origins == ("http://a.lan:8080", "https://b.lan")


@pytest.mark.parametrize(
    ("flags", "env", "words"),
    [
        ({}, {"LANCHAT_PORTT": "1"}, "unknown environment variable LANCHAT_PORTT"),
        ({"port": "http"}, {}, "--port"),
        ({"port": "70000"}, {}, "--port"),
        ({"db": "postgres://x/y"}, {}, "--db"),
        ({"bus": "carrier-pigeon"}, {}, "--bus"),
        ({"bus": "udp"}, {}, "--cluster-secret"),
        ({"bus": "udp", "cluster_secret": "short"}, {}, "--cluster-secret"),
        ({"udp_broadcast": "not-an-ip"}, {}, "--udp-broadcast"),
        ({"max_upload_bytes": "-1"}, {}, "--max-upload-bytes"),
        ({"allowed_origins": "evil"}, {}, "--allowed-origins"),
        ({"log_level": "loud"}, {}, "--log-level"),
    ],
)
def test_bad_settings_are_named(flags, env, words):
    with pytest.raises(SettingsError, match=words):
        build(flags, env)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_unknown_variable_exits_2_with_one_line(tmp_path):
    result = lanchat("serve", env={"LANCHAT_NOPE": "1"}, cwd=str(tmp_path))
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "lanchat: unknown environment variable LANCHAT_NOPE"
    )
    assert "Traceback" not in result.stderr


def test_bad_value_exits_2(tmp_path):
    result = lanchat("serve", "--port", "eighty", cwd=str(tmp_path))
    assert result.returncode == 2 and "--port" in result.stderr.splitlines()[-1]


def test_busy_port_exits_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = lanchat("serve", "--port", str(port), cwd=str(tmp_path))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("lanchat: cannot listen on 127.0.0.1:") and "Traceback" not in result.stderr
    )


def test_unreachable_database_exits_2(tmp_path):
    port = free_port()
    result = lanchat(
        "serve", "--db", f"mysql://root:pw@127.0.0.1:{port}/lanchat", cwd=str(tmp_path)
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lanchat: cannot use the database mysql://root:***@127.0.0.1:")
    assert "pw@" not in result.stderr and "Traceback" not in result.stderr


def test_db_upgrade_creates_schema_relative_to_cwd(tmp_path):
    result = lanchat("db", "upgrade", "--db", "sqlite:///data/x.db", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "x.db").is_file()
    again = lanchat("db", "upgrade", "--db", "sqlite:///data/x.db", cwd=str(tmp_path))
    assert again.returncode == 0


def test_db_upgrade_on_mysql_concurrently():
    """Several nodes migrating one fresh database at once: all succeed, one schema."""
    need_mysql()
    from .conftest import fresh_mysql_database

    url, drop = fresh_mysql_database()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "node", "db", "upgrade", "--db", url],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        drop()


def wait_http(url: str, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def serve(tmp_path, files: tuple[int, int]) -> tuple[subprocess.Popen, int]:
    """`lanchat serve` started with these open files limits (soft, hard), as a shell that set
    them would start it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
    env["LANCHAT_PORT"] = str(port)
    start = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, {files!r}); "
        "sys.argv = ['lanchat', 'serve']; runpy.run_module('node', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", start],
        cwd=str(tmp_path),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


def test_serve_then_sigterm_exits_0(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A login shell's soft limit: the node raises it to the hard one.
    proc, port = serve(tmp_path, (min(256, hard), hard))
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        lines = metrics.decode().splitlines()
        # Serving, the objects of the start are out of the garbage collector's sight.
        (frozen,) = [x for x in lines if x.startswith("lanchat_gc_frozen")]
        assert float(frozen.split()[1]) > 10_000, frozen
        # ... and young collections come every 10,000 new objects, not CPython's 700
        assert 'lanchat_gc_threshold{generation="0"} 10000.0' in lines
        assert f"process_max_fds {float(hard)}" in lines
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "data" / "lanchat.db").is_file()
    assert "stopped" in err
    assert f"INFO node: open files limit: {hard}\n" in err  # raised to the hard limit


def test_a_low_open_files_limit_is_named_at_start(tmp_path):
    proc, port = serve(tmp_path, (512, 512))
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "WARNING node: the open files limit is 512" in err, err


async def test_sigterm_closes_websockets_1001_and_exits_0(tmp_path):
    """Draining: connected clients get 1001, acked messages are stored, exit 0 within 10 s."""
    import aiohttp

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
    env["LANCHAT_PORT"] = str(port)
    log = open(tmp_path / "stderr.log", "w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "serve"], cwd=str(tmp_path), env=env, stderr=log
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:
            user = (
                await (
                    await http.post(
                        "/user/register", data={"mobile": "13822223333", "passwd": "pw-123456"}
                    )
                ).json()
            )["data"]
            ws = await http.ws_connect(
                "/chat", params={"id": str(user["id"]), "token": user["token"]}
            )
            await ws.send_str('{"cmd":0}')
            assert (await ws.receive(timeout=5)).data == '{"cmd":0}'
            proc.send_signal(signal.SIGTERM)
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
            await ws.close()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        log.close()
