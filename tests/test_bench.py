"""The benchmark's arithmetic: its verdict on each target, and the figures it reads from a node."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from .conftest import MYSQL_HOST, MYSQL_PORT, need_mysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import run


def flow(per_s: float, p99: float = 5.0, lost: int = 0, duplicates: int = 0) -> dict:
    return {"per_s": per_s, "p99_ms": p99, "lost": lost, "duplicates": duplicates}


def verdicts(scen: dict, rat: dict) -> dict[str, tuple[float, bool]]:
    return {t["target"]: (t["figure"], t["met"]) for t in run.targets(scen, rat, 50)}


def test_targets_at_their_edges():
    scen = {
        "relay 1:1 x50 inflight=1": flow(40_000),
        "lanchat/sqlite 1:1 x50 inflight=1": flow(24_000, p99=10.0),
        "lanchat/sqlite 1:1 x50 inflight=10": flow(30_000, lost=1),
        "lanchat/sqlite community of 200 inflight=4": flow(179_999),
        "lanchat/sqlite community of 200 inflight=16": flow(180_000),
        "lanchat/sqlite idle connections": {"kib_per_connection": 20.1},
    }
    got = verdicts(scen, {"sqlite_1_vs_relay": 0.6, "cluster_udp_per_node_vs_single_mariadb": 0.79})
    assert got == {
        "one-to-one, 1 in flight: >= 24,000/s": (24_000, True),
        "one-to-one, 1 in flight: >= 0.6 of the relay": (0.6, True),
        "one-to-one, 1 in flight: p99 < 10 ms": (10.0, False),
        "every scenario, 500 in flight included: 0 lost or duplicated": (1, False),
        "community of 200: >= 180,000 deliveries/s": (180_000, True),
        "idle connection: <= 20 KiB": (20.1, False),
        "3 nodes (udp): per node >= 0.8 of one node": (0.79, False),
    }


def test_targets_the_run_did_not_measure_are_left_out():
    scen = {"lanchat/sqlite 1:1 x50 inflight=1": flow(10_000, p99=9.9)}
    assert verdicts(scen, {}) == {
        "one-to-one, 1 in flight: >= 24,000/s": (10_000, False),
        "one-to-one, 1 in flight: p99 < 10 ms": (9.9, True),
    }


def test_between_two_readings_of_a_node():
    """Collections, their pauses and the bound on the longest, and messages and time per
    commit, from two /metrics readings."""
    le = 'lanchat_gc_pause_seconds_bucket{le="%s"}'
    before = {
        le % "0.002": 3.0,
        le % "0.005": 4.0,
        le % "+Inf": 4.0,
        "lanchat_gc_pause_seconds_count": 4.0,
        "lanchat_gc_pause_seconds_sum": 0.006,
        "lanchat_commits_total": 10.0,
        "lanchat_messages_stored_total": 100.0,
        "lanchat_commit_seconds_count": 10.0,
        "lanchat_commit_seconds_sum": 0.01,
        'lanchat_commit_seconds_bucket{le="0.001"}': 10.0,
        'lanchat_commit_seconds_bucket{le="0.002"}': 10.0,
        'lanchat_commit_seconds_bucket{le="+Inf"}': 10.0,
    }
    after = {
        le % "0.002": 5.0,  # two more under 2 ms
        le % "0.005": 7.0,  # and one between 2 and 5 ms
        le % "+Inf": 7.0,
        "lanchat_gc_pause_seconds_count": 7.0,
        "lanchat_gc_pause_seconds_sum": 0.0125,
        "lanchat_commits_total": 30.0,
        "lanchat_messages_stored_total": 450.0,
        "lanchat_commit_seconds_count": 30.0,
        "lanchat_commit_seconds_sum": 0.03,
        'lanchat_commit_seconds_bucket{le="0.001"}': 29.0,  # one of the 20 took over 1 ms
        'lanchat_commit_seconds_bucket{le="0.002"}': 30.0,
        'lanchat_commit_seconds_bucket{le="+Inf"}': 30.0,
    }
    assert run.node_between(before, after) == {
        "gc_collections": 3,
        "gc_pause_ms": 6.5,
        "gc_longest_ms_at_most": 5.0,
        "per_commit": 17.5,
        "commit_ms": 1.0,  # 20 ms over 20 commits
        "commit_longest_ms_at_most": 2.0,
    }
    assert run.node_between(after, after)["per_commit"] == 0
    # given the run's length: the writer's busy share (20 ms in 40 ms)
    assert run.node_between(before, after, elapsed_s=0.04)["writer_busy"] == 0.5


def test_how_the_writer_and_the_loop_shared_the_cores():
    """Given the run's length, the writer's time on a core and in the run queue, as shares
    of the run."""
    before = {
        "lanchat_gc_pause_seconds_count": 0.0,
        "lanchat_gc_pause_seconds_sum": 0.0,
        "message-writer on core": 1.0,
        "message-writer waiting for a core": 0.5,
        "loop on core": 3.0,
        "loop waiting for a core": 2.0,
    }
    after = {
        **before,
        "message-writer on core": 1.35,
        "message-writer waiting for a core": 0.8,
        "loop on core": 3.5,
        "loop waiting for a core": 2.25,
    }
    figures = run.node_between(before, after, elapsed_s=1.0)
    assert (figures["writer_cpu"], figures["writer_waited_core"]) == (0.35, 0.3)
    assert "writer_cpu" not in run.node_between(before, after)  # no length, no shares


def test_a_node_names_its_threads_and_the_bench_reads_their_times(tmp_path):
    """The node's threads carry their names where the OS shows them (top -H, /proc), so the
    bench finds the event loop and the message writer and reads their time on a core."""
    server = run.lanchat(str(tmp_path), f"sqlite:///{tmp_path}/names.db")
    try:
        tasks = Path(f"/proc/{server.proc.pid}/task").iterdir()
        names = {(task / "comm").read_text().strip() for task in tasks}
        assert {"message-writer", "checkpointer", "read-0", "write-0", "health-0"} <= names
        times = run.thread_times(server.proc.pid)
        assert set(times) == {
            "loop on core",
            "loop waiting for a core",
            "message-writer on core",
            "message-writer waiting for a core",
        }
        assert times["loop on core"] > 0  # it started, migrated the database and served
        assert run.loop_queued_s(server.proc.pid) >= times["loop waiting for a core"]
    finally:
        server.stop()


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mysql_server():
    saved = run.MYSQL["server"]
    yield run.MYSQL
    run.MYSQL["server"] = saved


def test_groups_whose_services_are_missing_are_left_out_with_the_reason(mysql_server):
    port = closed_port()
    mysql_server["server"] = f"mysql://root:@127.0.0.1:{port}"
    every = set(run.GROUPS)
    out = run.missing_services(every, f"redis://127.0.0.1:{port}/0", 10**9)
    assert set(out) == {"mariadb", "udp", "redis", "idle"}  # the clusters run on MariaDB
    assert out["udp"].startswith(f"MariaDB does not answer at mysql://root:@127.0.0.1:{port}: ")
    assert "open files" in out["idle"] and "--idle" in out["idle"]
    assert run.missing_services({"relay", "sqlite", "community"}, "redis://x:1/0", 10**9) == {}


def test_redis_alone_can_be_missing(mysql_server):
    need_mysql()
    mysql_server["server"] = f"mysql://root:@{MYSQL_HOST}:{MYSQL_PORT}"
    out = run.missing_services({"mariadb", "redis"}, f"redis://127.0.0.1:{closed_port()}/0", 1)
    assert list(out) == ["redis"] and out["redis"].startswith("Redis does not answer")


def test_connects_and_reconnects_as_ratios_of_the_relay():
    scen = {
        "lanchat/sqlite idle connections": {"connects_per_s": 1_500, "reconnects_per_s": 900},
        "relay idle connections": {"connects_per_s": 2_000, "reconnects_per_s": 1_200},
    }
    assert run.ratios(scen, 50) == {"connects_vs_relay": 0.75, "reconnects_vs_relay": 0.75}


def test_several_runs_give_each_figure_its_lowest_and_highest():
    """--runs N: every numeric figure that all runs measured as [lowest, highest], the ratios
    too, and each target with its figure in every run and how many runs met it."""
    one = "lanchat/sqlite 1:1 x50 inflight=1"
    first = {
        "scenarios": {
            one: {"per_s": 9000, "p99_ms": 9.5, "lost": 0},
            "relay idle connections": {"connects_per_s": 2000},  # the second run lacks it
        },
        "ratios": {"sqlite_1_vs_relay": 0.3},
        "targets": [{"target": "p99 < 10 ms", "figure": 9.5, "met": True, "from": one}],
    }
    second = {
        "scenarios": {one: {"per_s": 11000, "p99_ms": 10.5, "lost": 0}},
        "ratios": {"sqlite_1_vs_relay": 0.4},
        "targets": [{"target": "p99 < 10 ms", "figure": 10.5, "met": False, "from": one}],
    }
    assert run.spread([first, second]) == {
        "scenarios": {one: {"per_s": [9000, 11000], "p99_ms": [9.5, 10.5], "lost": [0, 0]}},
        "ratios": {"sqlite_1_vs_relay": [0.3, 0.4]},
        "targets": {"p99 < 10 ms": {"figures": [9.5, 10.5], "met": 1}},
    }
