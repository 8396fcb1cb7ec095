"""Property tests: random and malformed input never breaks dispatch, /chat or the HTTP API."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.dispatch import Chat, FrameError, Heartbeat, parse

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
frames = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "userid": st.one_of(st.just(7), json_values),
        "cmd": st.one_of(st.sampled_from([0, 10, 11, 20, 21]), json_values),
        "dstid": st.one_of(st.integers(min_value=-5, max_value=10**20), json_values),
        "media": st.one_of(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 100]), json_values),
        "content": st.one_of(st.text(max_size=5000), json_values),
        "url": st.one_of(
            st.sampled_from(["/mnt/a.png", "https://x.lan/a", "javascript:x"]), json_values
        ),
        "pic": json_values,
        "memo": json_values,
        "amount": st.one_of(st.integers(min_value=-10, max_value=2 * 10**9), json_values),
    },
)


# The codes a frame the client got wrong is answered with (never "internal").
FRAME_ERRORS = {
    "bad_json",
    "bad_frame",
    "bad_cmd",
    "bad_media",
    "missing_field",
    "bad_url",
    "too_long",
    "spoofed_sender",
}


@given(frames)
@settings(max_examples=400, deadline=None)
def test_dispatch_answers_every_object(frame):
    """Any JSON object gives a Heartbeat, a valid Chat, or a FrameError with a known code."""
    try:
        result = parse(json.dumps(frame), 7)  # json: integers of any size, as a client may send
    except FrameError as exc:
        assert exc.code in FRAME_ERRORS  # json writes inf as Infinity: bad_json then
        assert exc.msg
        return
    assert isinstance(result, Heartbeat | Chat)
    if isinstance(result, Chat):
        assert result.fields["userid"] == 7
        assert set(result.fields) <= {
            "id",
            "userid",
            "cmd",
            "dstid",
            "media",
            "content",
            "pic",
            "url",
            "memo",
            "amount",
        }
        orjson.dumps(result.fields)


@given(st.binary(max_size=200) | st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_dispatch_answers_any_text(data):
    try:
        parse(data, 7)
    except FrameError as exc:
        assert exc.code in FRAME_ERRORS


async def test_live_chat_survives_random_frames(make_server):
    """Random frames on a live socket: each is answered, and the connection stays open."""
    api = await make_server(send_rate_per_s=10000.0, send_burst=10000)
    a = await api.register()
    b = await api.register()
    await api.friends(a, b)
    ws = await api.ws(a)
    examples = []

    @given(frames)
    @settings(
        max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def collect(frame):
        examples.append(frame)

    collect()
    for n, frame in enumerate(examples):
        frame = {**frame, "id": f"fuzz-{n}"} if frame.get("cmd") in (10, 11) else frame
        frame.pop("dstid", None) if frame.get("cmd") == 10 and frame.get("dstid") == b[
            "id"
        ] else None
        await ws.send_str(json.dumps(frame))
        reply = orjson.loads((await ws.receive(timeout=10)).data)
        assert reply["cmd"] in (0, 20, 21), reply
    await ws.send_str('{"cmd":0}')
    assert orjson.loads((await ws.receive(timeout=10)).data) == {"cmd": 0}
    assert not ws.closed


ENDPOINTS = [
    "/user/register",
    "/user/login",
    "/user/find",
    "/user/update",
    "/contact/addfriend",
    "/contact/delfriend",
    "/contact/loadfriend",
    "/contact/createcommunity",
    "/contact/loadcommunity",
    "/contact/joincommunity",
    "/contact/leavecommunity",
    "/contact/loadmembers",
    "/message/history",
    "/message/conversations",
    "/message/read",
    "/attach/upload",
]
field_values = st.one_of(
    st.text(max_size=80),
    st.integers(),
    st.sampled_from(["", "0", "-1", "99999999999999999999", "1", "M", "X", "/mnt/x", "%00"]),
)
bodies = st.dictionaries(
    st.sampled_from(
        [
            "mobile",
            "passwd",
            "nickname",
            "avatar",
            "sex",
            "memo",
            "id",
            "dstid",
            "name",
            "icon",
            "cate",
            "cmd",
            "before",
            "after",
            "limit",
            "seq",
            "userid",
            "ownerid",
            "oldpasswd",
            "token",
        ]
    ),
    field_values,
    max_size=6,
)


async def test_http_fields_never_500(make_server):
    """Random field values on every endpoint, logged in or not: always the envelope, never 500."""
    api = await make_server(login_fails_per_addr=100000, login_fails_per_mobile=100000)
    user = await api.register()
    cases = []

    @given(st.sampled_from(ENDPOINTS), bodies, st.booleans(), st.booleans())
    @settings(
        max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def collect(path, body, authed, as_json):
        cases.append((path, body, authed, as_json))

    collect()
    for path, body, authed, as_json in cases:
        headers = {"Authorization": f"Bearer {user['token']}"} if authed else {}
        if as_json:
            resp = await api.client.post(path, json=body, headers=headers)
        else:
            resp = await api.client.post(
                path, data={k: str(v) for k, v in body.items()}, headers=headers
            )
        payload = await resp.json()
        assert resp.status < 500, (path, body, payload)
        assert payload["code"] in (0, -1)
        if payload["code"] == -1:
            assert payload["error"] and payload["msg"]
        await asyncio.sleep(0)


async def test_connection_cap_per_user(make_server):
    api = await make_server(max_conns_per_user=2)
    a = await api.register()
    await api.ws(a)
    await api.ws(a)
    try:
        await api.ws(a)
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 429
    else:
        raise AssertionError("a third connection was accepted")
