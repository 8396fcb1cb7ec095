"""dispatch: every frame rule, without any socket."""

from __future__ import annotations

import ast
import pathlib

import orjson
import pytest

from node import dispatch
from node.dispatch import Chat, FrameError, Heartbeat, parse

ME = 7


def frame(**fields):
    return orjson.dumps(fields).decode()


def rejects(code: str, text: str) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse(text, ME)
    assert info.value.code == code, info.value.msg
    return info.value


def test_heartbeat():
    assert isinstance(parse('{"cmd":0}', ME), Heartbeat)


VALID = [
    {"media": 1, "content": "hello"},
    {"media": 2, "content": "Title", "url": "https://news.lan/1", "pic": "/mnt/a.png", "memo": "m"},
    {"media": 2, "content": "Title", "url": "https://news.lan/1"},
    {"media": 3, "url": "/mnt/v.ogg", "amount": 12},
    {"media": 4, "url": "/mnt/p.png"},
    {"media": 5, "amount": 888, "memo": "good luck"},
    {"media": 6, "content": "😀"},
    {"media": 6, "url": "/mnt/e.gif"},
    {"media": 7, "url": "http://intranet.lan/page"},
    {"media": 8, "url": "/mnt/v.mp4", "pic": "/mnt/v.png"},
    {"media": 9, "content": "42", "pic": "/mnt/a.png", "memo": "Bob"},
    {"media": 9, "content": 42},
    {"media": 100, "content": "anything", "amount": 0},
]


@pytest.mark.parametrize("fields", VALID)
def test_every_media_kind_accepted(fields):
    chat = parse(frame(id="c1", cmd=10, dstid=3, **fields), ME)
    assert isinstance(chat, Chat)
    assert chat.fields["userid"] == ME and chat.fields["media"] == fields["media"]
    assert chat.client_id == "c1" and chat.frame_id == "c1"


def test_unknown_fields_dropped_and_sender_set():
    chat = parse(frame(cmd=11, dstid=5, media=1, content="hi", evil="x", mid=1, seq=9), ME)
    assert chat.fields == {"cmd": 11, "dstid": 5, "media": 1, "content": "hi", "userid": ME}
    assert chat.client_id is None


def test_id_compared_as_string():
    assert parse(frame(id=7, cmd=10, dstid=3, media=1, content="x"), ME).client_id == "7"
    assert parse(frame(id="7", cmd=10, dstid=3, media=1, content="x"), ME).client_id == "7"


def test_userid_own_is_fine_other_is_spoofed():
    assert isinstance(parse(frame(userid=ME, cmd=10, dstid=3, media=1, content="x"), ME), Chat)
    assert isinstance(parse(frame(userid=str(ME), cmd=10, dstid=3, media=1, content="x"), ME), Chat)
    err = rejects(
        "spoofed_sender", frame(id="s", userid=ME + 1, cmd=10, dstid=3, media=1, content="x")
    )
    assert err.frame_id == "s"


@pytest.mark.parametrize(
    ("code", "fields"),
    [
        ("bad_frame", {"id": True, "cmd": 10, "dstid": 3, "media": 1, "content": "x"}),
        ("bad_frame", {"id": "x" * 65, "cmd": 10, "dstid": 3, "media": 1, "content": "x"}),
        ("bad_frame", {"id": [1], "cmd": 10, "dstid": 3, "media": 1, "content": "x"}),
        ("missing_field", {"dstid": 3, "media": 1, "content": "x"}),
        ("bad_cmd", {"cmd": 20, "dstid": 3, "media": 1, "content": "x"}),
        ("bad_cmd", {"cmd": "10", "dstid": 3, "media": 1, "content": "x"}),
        ("missing_field", {"cmd": 10, "media": 1, "content": "x"}),
        ("bad_frame", {"cmd": 10, "dstid": "abc", "media": 1, "content": "x"}),
        ("bad_frame", {"cmd": 10, "dstid": 0, "media": 1, "content": "x"}),
        ("missing_field", {"cmd": 10, "dstid": 3, "content": "x"}),
        ("bad_media", {"cmd": 10, "dstid": 3, "media": 10, "content": "x"}),
        ("bad_media", {"cmd": 10, "dstid": 3, "media": "1", "content": "x"}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 1}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 1, "content": "   "}),
        ("too_long", {"cmd": 10, "dstid": 3, "media": 1, "content": "x" * 4001}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 1, "content": ["x"]}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 2, "content": "title"}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 2, "url": "/mnt/a"}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 3, "url": "/mnt/a.ogg"}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 3, "url": "/mnt/a.ogg", "amount": 0}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 3, "url": "/mnt/a.ogg", "amount": 601}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 4}),
        ("bad_url", {"cmd": 10, "dstid": 3, "media": 4, "url": "javascript:alert(1)"}),
        ("bad_url", {"cmd": 10, "dstid": 3, "media": 4, "url": "data:image/png;base64,AA"}),
        ("bad_url", {"cmd": 10, "dstid": 3, "media": 4, "url": "/etc/passwd"}),
        ("bad_url", {"cmd": 10, "dstid": 3, "media": 4, "url": "/mnt/../x"}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 5}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 5, "amount": 0}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 5, "amount": 1_000_000_001}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 5, "amount": 1.5}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 5, "amount": "5"}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 6}),
        ("too_long", {"cmd": 10, "dstid": 3, "media": 6, "content": "x" * 65}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 7}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 8, "pic": "/mnt/a.png"}),
        ("bad_url", {"cmd": 10, "dstid": 3, "media": 8, "url": "/mnt/v.mp4", "pic": "ftp://x"}),
        ("missing_field", {"cmd": 10, "dstid": 3, "media": 9}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 9, "content": "Bob"}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 9, "content": "0"}),
        ("bad_url", {"cmd": 10, "dstid": 3, "media": 100, "url": "file:///etc/passwd"}),
        ("bad_frame", {"cmd": 10, "dstid": 3, "media": 100, "amount": -1}),
        ("too_long", {"cmd": 10, "dstid": 3, "media": 100, "memo": "m" * 1001}),
    ],
)
def test_rules(code, fields):
    rejects(code, orjson.dumps(fields).decode())


@pytest.mark.parametrize("text", ["{", "nope", "", '{"cmd":0'])
def test_bad_json(text):
    rejects("bad_json", text)


@pytest.mark.parametrize("text", ["[]", "1", '"x"', "null"])
def test_not_an_object(text):
    rejects("bad_frame", text)


def test_check_allowed():
    chat = parse(frame(id=1, cmd=10, dstid=3, media=1, content="x"), ME)
    dispatch.check_allowed(chat, {3}, set())
    with pytest.raises(FrameError) as info:
        dispatch.check_allowed(chat, {4}, set())
    assert info.value.code == "not_friends" and info.value.frame_id == 1
    group = parse(frame(cmd=11, dstid=9, media=1, content="x"), ME)
    dispatch.check_allowed(group, set(), {9})
    with pytest.raises(FrameError) as info:
        dispatch.check_allowed(group, {9}, set())
    assert info.value.code == "not_member"


def test_conversation_keys():
    a = parse(frame(cmd=10, dstid=3, media=1, content="x"), ME)
    b = parse(frame(cmd=10, dstid=ME, media=1, content="x"), 3)
    assert dispatch.conversation_key(a) == dispatch.conversation_key(b) == (10, 3, ME)
    g = parse(frame(cmd=11, dstid=5, media=1, content="x"), ME)
    assert dispatch.conversation_key(g) == (11, 5, 0)


def test_server_frames():
    assert orjson.loads(dispatch.ack_frame("a", 1, 2, 3)) == {
        "cmd": 20,
        "id": "a",
        "mid": 1,
        "seq": 2,
        "createat": 3,
    }
    assert orjson.loads(dispatch.error_frame("bad_json", "m")) == {
        "cmd": 21,
        "id": None,
        "error": "bad_json",
        "msg": "m",
    }


PURE = (
    "dispatch.py",
    "packets.py",
    "limits.py",
    "errors.py",
    "settings.py",
    "frames.py",
    "wire.py",
)
IO_MODULES = {"aiohttp", "asyncio", "socket", "sqlalchemy", "aiosqlite", "aiomysql", "redis"}


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io(name):
    """The protocol core stays pure: no sockets, event loop or SQL in these modules."""
    path = pathlib.Path(dispatch.__file__).parent / name
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
            elif node.level == 1 and node.module:
                assert f"{node.module}.py" in PURE, f"{name} imports node.{node.module}"
    assert not imported & IO_MODULES
