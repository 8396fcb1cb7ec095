"""The built package carries the client and the migrations; installed, it serves from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile

from .test_cli import free_port, wait_http


def test_wheel_installs_and_serves_the_client_from_any_directory(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            root,
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("lanchat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "node/web/index.html",
        "node/web/js/app.js",
        "node/web/js/vendor/vue.esm-browser.prod.js",
        "node/web/css/app.css",
        "node/migrations/env.py",
        "node/migrations/versions/0001_accounts.py",
        "node/migrations/versions/0002_messages.py",
    ):
        assert needed in names, needed
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies come from the test environment (a path, not its editable lanchat hook);
    # lanchat itself only from the wheel.
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
    env["LANCHAT_PORT"] = str(port)
    env.pop("PYTHONPATH", None)
    log = open(tmp_path / "serve.log", "w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [str(venv / "bin/lanchat"), "serve"], cwd=elsewhere, env=env, stderr=log
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert 'id="app-template"' in page
        where = subprocess.run(
            [str(venv / "bin/python"), "-c", "import node; print(node.__file__)"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            check=True,
        )
        assert str(venv) in where.stdout  # the installed copy, not the source tree
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
    assert (elsewhere / "data" / "lanchat.db").is_file()
