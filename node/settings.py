"""Settings: one frozen, typed record built once from flags and LANCHAT_* environment."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "LANCHAT_"


class SettingsError(ValueError):
    """A setting is missing, unknown or malformed; the message is one line for the operator."""


@dataclass(frozen=True)
class Settings:
    """Everything a node is configured with. Units are part of the names."""

    host: str = "127.0.0.1"
    port: int = 8080
    db: str = "sqlite:///data/lanchat.db"
    bus: str = "local"
    udp_port: int = 3000
    udp_broadcast: str = "127.255.255.255"
    cluster_secret: str | None = None
    node_id: str = ""
    upload_dir: str = "data/mnt"
    max_upload_bytes: int = 10 * 1024 * 1024
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "info"
    token_ttl_days: int = 30
    login_fails_per_mobile: int = 5
    login_fails_per_addr: int = 50
    login_fail_window_s: float = 60.0
    send_rate_per_s: float = 20.0
    send_burst: int = 40
    max_communities: int = 5
    queue_max_frames: int = 1000
    queue_max_bytes: int = 1024 * 1024
    idle_timeout_s: float = 60.0
    max_frame_bytes: int = 16 * 1024
    drain_timeout_s: float = 5.0
    udp_drop_percent: float = 0.0
    max_conns_per_user: int = 20
    upload_idle_timeout_s: float = 30.0
    password_time_cost: int = 3
    password_memory_kib: int = 65536

    def __post_init__(self) -> None:
        if not self.node_id:
            host = self.host
            if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming, not binding
                host = platform.node() or "localhost"
            object.__setattr__(self, "node_id", f"{host}:{self.port}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise ValueError("must be a percentage 0-100")
    return value


def _db_url(text: str) -> str:
    if re.fullmatch(r"sqlite:///.+", text) or re.fullmatch(r"mysql://[^/]+/\w+", text):
        return text
    raise ValueError("must be sqlite:///PATH or mysql://USER:PASS@HOST:PORT/DB")


def _bus(text: str) -> str:
    if text in ("local", "udp") or text.startswith(("redis://", "rediss://")):
        return text
    raise ValueError("must be local, udp or redis://HOST:PORT/DB")


def _ipv4(text: str) -> str:
    ipaddress.IPv4Address(text)
    return text


def _origins(text: str) -> tuple[str, ...]:
    items = tuple(item.strip().rstrip("/") for item in text.split(",") if item.strip())
    for item in items:
        if not re.fullmatch(r"https?://[^/\s]+", item):
            raise ValueError(f"{item!r} is not an origin like http://host:port")
    return items


def _log_level(text: str) -> str:
    text = text.lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError("must be debug, info, warning or error")
    return text


def _secret(text: str) -> str:
    if len(text.encode()) < 16:
        raise ValueError("must be at least 16 bytes")
    return text


def _node_id(text: str) -> str:
    if not re.fullmatch(r"[\w.:-]{1,64}", text):
        raise ValueError("must be 1-64 characters of letters, digits, '.', ':', '-' or '_'")
    return text


# option name -> (parser, help). The option is --name-with-dashes, the variable LANCHAT_NAME.
OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "host": (str, "HTTP and WebSocket listen address"),
    "port": (_port, "HTTP and WebSocket listen port"),
    "db": (_db_url, "sqlite:///PATH or mysql://USER:PASS@HOST:PORT/DB"),
    "bus": (_bus, "local, udp or redis://HOST:PORT/DB"),
    "udp_port": (_port, "UDP bus port, the same on every node"),
    "udp_broadcast": (_ipv4, "broadcast address of the LAN"),
    "cluster_secret": (_secret, "HMAC key of the bus datagrams (16+ bytes)"),
    "node_id": (_node_id, "unique name of this node in the cluster"),
    "upload_dir": (str, "where uploads are stored; served at /mnt/"),
    "max_upload_bytes": (_positive_int, "upload size limit in bytes"),
    "allowed_origins": (_origins, "comma-separated extra Origins accepted"),
    "log_level": (_log_level, "debug, info, warning or error"),
    "token_ttl_days": (_positive_int, "login token lifetime in days"),
    "login_fails_per_mobile": (_positive_int, "failed logins per mobile per window"),
    "login_fails_per_addr": (_positive_int, "failed logins per client address per window"),
    "login_fail_window_s": (_positive_float, "login failure window in seconds"),
    "send_rate_per_s": (_positive_float, "messages per second per user"),
    "send_burst": (_positive_int, "message burst per user"),
    "max_communities": (_positive_int, "communities one user may own"),
    "queue_max_frames": (_positive_int, "outbound frames queued per connection"),
    "queue_max_bytes": (_positive_int, "outbound bytes queued per connection"),
    "idle_timeout_s": (_positive_float, "seconds without a frame or pong before closing"),
    "max_frame_bytes": (_positive_int, "largest client frame in bytes"),
    "drain_timeout_s": (_positive_float, "seconds allowed to drain on SIGTERM"),
    "udp_drop_percent": (_percent, "test only: drop this share of received datagrams"),
    "max_conns_per_user": (_positive_int, "WebSocket connections one user may hold on a node"),
    "upload_idle_timeout_s": (_positive_float, "an upload that sends nothing this long is dropped"),
    "password_time_cost": (_positive_int, "argon2id passes per password hash"),
    "password_memory_kib": (_positive_int, "argon2id memory per password hash, KiB"),
}

_FIELDS = {f.name for f in dataclasses.fields(Settings)}
assert set(OPTIONS) == _FIELDS, "every setting needs an option and vice versa"


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Declare --flags for the given settings (all by default); values stay strings until build."""
    for name in names or OPTIONS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=OPTIONS[name][1],
        )


def build(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Settings:
    """Merge environment and flags (flags win), validate every value, return frozen Settings."""
    raw: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in OPTIONS:
            raise SettingsError(f"unknown environment variable {key}")
        raw[name] = value
    for name, flag in flags.items():
        if name in OPTIONS and flag is not None:
            raw[name] = flag
    values: dict[str, Any] = {}
    for name, text in raw.items():
        parse = OPTIONS[name][0]
        try:
            values[name] = parse(text)
        except ValueError as exc:
            option = "--" + name.replace("_", "-")
            raise SettingsError(f"bad value {text!r} for {option}: {exc}") from None
    settings = Settings(**values)
    if settings.bus == "udp" and not settings.cluster_secret:
        raise SettingsError("--bus udp needs --cluster-secret (at least 16 bytes)")
    return settings


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy with some fields changed (tests and tools)."""
    return dataclasses.replace(settings, **changes)


__all__ = ["OPTIONS", "Settings", "SettingsError", "add_arguments", "build", "replace"]
