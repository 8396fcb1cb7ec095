"""/chat over real sockets: handshake rules, delivery, acks, idempotency, seq, limits."""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType

from node import ws as node_ws
from node.keys import METRICS

from .test_dispatch import VALID

DEADLINE = 10


async def recv(ws, *, skip=(30, 31), timeout=DEADLINE) -> dict:
    """The next JSON frame, skipping list-refresh events and receipts unless asked for."""
    while True:
        msg = await ws.receive(timeout=timeout)
        assert msg.type is WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        frame = orjson.loads(msg.data)
        if frame.get("cmd") not in skip:
            return frame


async def nothing_more(ws, wait=0.3) -> None:
    """No further frame arrives (other than events) within a short wait."""
    with pytest.raises(asyncio.TimeoutError):
        await recv(ws, timeout=wait)


async def closed_with(ws, code: int) -> None:
    while True:
        msg = await ws.receive(timeout=DEADLINE)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            break
    assert ws.close_code == code


async def pair(api):
    a, b = await api.register("Ann"), await api.register("Bob")
    await api.friends(a, b)
    return a, b


# ---- handshake -------------------------------------------------------------------------------


async def test_handshake_rules(api):
    a, b = await pair(api)
    url = "/chat"
    bad = [
        ({"id": str(a["id"])}, 401),
        ({"id": str(a["id"]), "token": "forged"}, 401),
        ({"token": a["token"]}, 401),
        ({"id": str(b["id"]), "token": a["token"]}, 401),
        ({"id": "0", "token": ""}, 401),
    ]
    for params, status in bad:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await api.client.ws_connect(url, params=params)
        assert info.value.status == status, params
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await api.client.ws_connect(
            url,
            params={"id": str(a["id"]), "token": a["token"]},
            headers={"Origin": "http://evil.example"},
        )
    assert info.value.status == 403
    own = api.base.rstrip("/")
    ws = await api.ws(a, headers={"Origin": own})
    await ws.send_str('{"cmd":0}')
    assert await recv(ws) == {"cmd": 0}


async def test_bad_json_answered_and_connection_kept(api):
    a, _ = await pair(api)
    ws = await api.ws(a)
    await ws.send_str("{not json")
    assert await recv(ws) == {
        "cmd": 21,
        "id": None,
        "error": "bad_json",
        "msg": "the frame is not valid JSON",
    }
    await ws.send_str('{"cmd":0}')
    assert await recv(ws) == {"cmd": 0}


# ---- delivery --------------------------------------------------------------------------------


async def test_one_to_one_ack_and_delivery_to_every_device(api):
    """The sender's socket gets the ack; the peer and the sender's other devices the message."""
    a, b = await pair(api)
    a1, a2, b1, b2 = await api.ws(a), await api.ws(a), await api.ws(b), await api.ws(b)
    await a1.send_str(
        orjson.dumps(
            {
                "id": "m1",
                "cmd": 10,
                "dstid": b["id"],
                "media": 1,
                "content": "hello",
                "extra": "dropped",
            }
        ).decode()
    )
    ack = await recv(a1)
    assert ack["cmd"] == 20 and ack["id"] == "m1" and ack["seq"] == 1
    assert isinstance(ack["mid"], int) and isinstance(ack["createat"], int)
    expected = {
        "id": "m1",
        "cmd": 10,
        "dstid": b["id"],
        "media": 1,
        "content": "hello",
        "userid": a["id"],
        "mid": ack["mid"],
        "seq": 1,
        "createat": ack["createat"],
    }
    for ws in (a2, b1, b2):
        assert await recv(ws) == expected
    await nothing_more(a1)
    await nothing_more(b1)


async def test_every_media_kind_through_the_socket(api):
    a, b = await pair(api)
    wa, wb = await api.ws(a), await api.ws(b)
    for n, fields in enumerate(VALID):
        await wa.send_str(orjson.dumps({"id": n, "cmd": 10, "dstid": b["id"], **fields}).decode())
        ack = await recv(wa)
        assert ack["cmd"] == 20 and ack["id"] == n and ack["seq"] == n + 1, ack
        got = await recv(wb)
        assert got["media"] == fields["media"] and got["seq"] == n + 1


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"media": 1, "content": ""}, "missing_field"),
        ({"media": 4, "url": "javascript:alert(1)"}, "bad_url"),
        ({"media": 1, "content": "x" * 4001}, "too_long"),
        ({"media": 77, "content": "x"}, "bad_media"),
    ],
)
async def test_rule_breakers_get_cmd_21(api, fields, code):
    a, b = await pair(api)
    wa, wb = await api.ws(a), await api.ws(b)
    await wa.send_str(orjson.dumps({"id": "r", "cmd": 10, "dstid": b["id"], **fields}).decode())
    err = await recv(wa)
    assert err["cmd"] == 21 and err["id"] == "r" and err["error"] == code
    await nothing_more(wb)


async def test_spoofed_sender_non_friend_non_member_rejected(api):
    a, b = await pair(api)
    c = await api.register("Cat")
    cid = await api.community(c)
    wa, wb, wc = await api.ws(a), await api.ws(b), await api.ws(c)
    cases = [
        ({"userid": b["id"], "cmd": 10, "dstid": b["id"]}, "spoofed_sender"),
        ({"cmd": 10, "dstid": c["id"]}, "not_friends"),
        ({"cmd": 10, "dstid": a["id"]}, "not_friends"),
        ({"cmd": 11, "dstid": cid}, "not_member"),
        ({"cmd": 11, "dstid": 99999}, "not_member"),
    ]
    for fields, code in cases:
        await wa.send_str(orjson.dumps({"id": code, "media": 1, "content": "x", **fields}).decode())
        err = await recv(wa)
        assert (err["cmd"], err["error"]) == (21, code)
    await nothing_more(wb)
    await nothing_more(wc)
    history = await api.call("/message/history", b["token"], cmd=10, dstid=a["id"])
    assert history["rows"] == []


async def test_resend_is_stored_and_delivered_once(api):
    a, b = await pair(api)
    wa, wb = await api.ws(a), await api.ws(b)
    first = {"id": 77, "cmd": 10, "dstid": b["id"], "media": 1, "content": "once"}
    await wa.send_str(orjson.dumps(first).decode())
    ack1 = await recv(wa)
    await wa.send_str(orjson.dumps({**first, "id": "77", "content": "changed"}).decode())
    ack2 = await recv(wa)
    assert (ack2["mid"], ack2["seq"], ack2["createat"]) == (
        ack1["mid"],
        ack1["seq"],
        ack1["createat"],
    )
    assert (await recv(wb))["content"] == "once"
    await nothing_more(wb)
    rows = (await api.call("/message/history", b["token"], cmd=10, dstid=a["id"]))["rows"]
    assert [r["content"] for r in rows] == ["once"]


async def test_frames_without_id_are_not_deduplicated(api):
    a, b = await pair(api)
    wa = await api.ws(a)
    for _ in range(2):
        await wa.send_str(
            orjson.dumps({"cmd": 10, "dstid": b["id"], "media": 1, "content": "go"}).decode()
        )
    assert [(await recv(wa))["seq"] for _ in range(2)] == [1, 2]


async def test_seq_gap_free_under_concurrent_senders(api):
    """Five members write one community at once: seqs are exactly 1..N, history in order."""
    users = [await api.register(f"u{i}") for i in range(5)]
    cid = await api.community(users[0], *users[1:])
    sockets = [await api.ws(u) for u in users]
    per_user = 30

    async def burst(i, ws):
        for n in range(per_user):
            await ws.send_str(
                orjson.dumps(
                    {"id": f"{i}-{n}", "cmd": 11, "dstid": cid, "media": 1, "content": f"{i}:{n}"}
                ).decode()
            )
        seqs = []
        while len(seqs) < per_user:
            frame = await recv(ws)
            if frame["cmd"] == 20:
                seqs.append(frame["seq"])
        return seqs

    results = await asyncio.gather(*(burst(i, ws) for i, ws in enumerate(sockets)))
    total = per_user * len(users)
    assert sorted(s for seqs in results for s in seqs) == list(range(1, total + 1))
    for seqs in results:
        assert seqs == sorted(seqs)  # one sender's messages keep their order
    rows = []
    after = 0
    while True:
        page = (
            await api.call(
                "/message/history", users[1]["token"], cmd=11, dstid=cid, after=after, limit=100
            )
        )["rows"]
        if not page:
            break
        rows += page
        after = page[-1]["seq"]
    assert [r["seq"] for r in rows] == list(range(1, total + 1))


async def test_long_chinese_message_intact(api):
    a, b = await pair(api)
    wa, wb = await api.ws(a), await api.ws(b)
    text = ("局域网即时通讯测试消息，" * 300)[:3000]
    await wa.send_str(
        orjson.dumps(
            {"id": "zh", "cmd": 10, "dstid": b["id"], "media": 1, "content": text}
        ).decode()
    )
    await recv(wa)
    assert (await recv(wb))["content"] == text
    rows = (await api.call("/message/history", b["token"], cmd=10, dstid=a["id"]))["rows"]
    assert rows[0]["content"] == text


async def test_offline_user_fetches_history_in_order(api):
    a, b = await pair(api)
    wa = await api.ws(a)
    for n in range(7):
        await wa.send_str(
            orjson.dumps(
                {"id": n, "cmd": 10, "dstid": b["id"], "media": 1, "content": f"m{n}"}
            ).decode()
        )
        await recv(wa)
    body = await api.call("/message/history", b["token"], method="GET", cmd=10, dstid=a["id"])
    assert [r["content"] for r in body["rows"]] == [f"m{n}" for n in range(7)]
    assert body["total"] == 7 and all(r["userid"] == a["id"] for r in body["rows"])
    latest = await api.call("/message/history", b["token"], cmd=10, dstid=a["id"], limit=3)
    assert [r["seq"] for r in latest["rows"]] == [5, 6, 7]
    before = await api.call(
        "/message/history", b["token"], cmd=10, dstid=a["id"], before=5, limit=2
    )
    assert [r["seq"] for r in before["rows"]] == [3, 4]
    after = await api.call("/message/history", b["token"], cmd=10, dstid=a["id"], after=5)
    assert [r["seq"] for r in after["rows"]] == [6, 7]
    err = await api.call(
        "/message/history", b["token"], cmd=10, dstid=a["id"], before=5, after=1, status=400
    )
    assert err["error"] == "bad_request"
    for bad in (
        {"cmd": 12, "dstid": a["id"]},
        {"cmd": 10},
        {"cmd": 10, "dstid": a["id"], "limit": 101},
        {"cmd": 10, "dstid": a["id"], "limit": 0},
    ):
        await api.call("/message/history", b["token"], status=400, **bad)


async def test_history_participants_only(api):
    a, b = await pair(api)
    c = await api.register()
    cid = await api.community(a, b)
    await api.call("/message/history", c["token"], cmd=10, dstid=a["id"], status=403)
    await api.call("/message/history", c["token"], cmd=11, dstid=cid, status=403)
    await api.call("/message/history", c["token"], cmd=11, dstid=99999, status=404)
    await api.call("/message/history", c["token"], cmd=10, dstid=99999, status=404)
    await api.call("/message/history", cmd=10, dstid=a["id"], status=401)
    empty = await api.call("/message/history", a["token"], cmd=10, dstid=b["id"])
    assert empty["rows"] == [] and empty["total"] == 0
    await api.call("/contact/leavecommunity", b["token"], dstid=cid)
    await api.call("/message/history", b["token"], cmd=11, dstid=cid, status=403)


async def test_members_see_history_from_before_they_joined(api):
    a, b = await api.register(), await api.register()
    cid = await api.community(a)
    wa = await api.ws(a)
    await wa.send_str(
        orjson.dumps({"cmd": 11, "dstid": cid, "media": 1, "content": "early"}).decode()
    )
    await recv(wa)
    await api.call("/contact/joincommunity", b["token"], dstid=cid)
    rows = (await api.call("/message/history", b["token"], cmd=11, dstid=cid))["rows"]
    assert [r["content"] for r in rows] == ["early"]


# ---- live state ------------------------------------------------------------------------------


async def test_creator_and_joiner_receive_without_reconnecting(api):
    """Group sets change at once: the creator and a new member get messages right away."""
    a, b = await api.register("A"), await api.register("B")
    wa, wb = await api.ws(a), await api.ws(b)
    cid = (await api.call("/contact/createcommunity", a["token"], name="live"))["data"]["id"]
    created = await recv(wa, skip=())
    assert created == {"cmd": 30, "event": "community_created", "dstid": cid, "userid": a["id"]}
    await api.call("/contact/joincommunity", b["token"], dstid=cid)
    for ws in (wa, wb):
        event = await recv(ws, skip=())
        assert (event["event"], event["dstid"], event["userid"]) == (
            "community_joined",
            cid,
            b["id"],
        )
    await wb.send_str(orjson.dumps({"cmd": 11, "dstid": cid, "media": 1, "content": "hi"}).decode())
    assert (await recv(wb))["cmd"] == 20
    assert (await recv(wa))["content"] == "hi"
    await api.call("/contact/leavecommunity", b["token"], dstid=cid)
    assert (await recv(wb, skip=()))["event"] == "community_left"
    await wb.send_str(orjson.dumps({"cmd": 11, "dstid": cid, "media": 1, "content": "x"}).decode())
    assert (await recv(wb))["error"] == "not_member"


async def test_friendship_events_and_live_permission(api):
    a, b = await api.register(), await api.register()
    wa, wb = await api.ws(a), await api.ws(b)
    await api.call("/contact/addfriend", a["token"], dstid=b["id"])
    assert await recv(wa, skip=()) == {"cmd": 30, "event": "friend_added", "dstid": b["id"]}
    assert await recv(wb, skip=()) == {"cmd": 30, "event": "friend_added", "dstid": a["id"]}
    await wb.send_str(
        orjson.dumps({"cmd": 10, "dstid": a["id"], "media": 1, "content": "hey"}).decode()
    )
    assert (await recv(wb))["cmd"] == 20
    assert (await recv(wa))["content"] == "hey"
    await api.call("/contact/delfriend", b["token"], dstid=a["id"])
    assert (await recv(wa, skip=()))["event"] == "friend_removed"
    await wa.send_str(
        orjson.dumps({"cmd": 10, "dstid": b["id"], "media": 1, "content": "?"}).decode()
    )
    assert (await recv(wa))["error"] == "not_friends"


async def test_a_node_that_has_not_heard_of_a_friendship_asks_the_database(make_server):
    """Friendships and memberships reach the other nodes over the bus a moment after they
    are made; a message sent through another node meanwhile is checked in the database, not
    refused. These two nodes share the database but no bus, so the second never hears."""
    one = await make_server(node_id="one")
    two = await make_server(node_id="two")
    a, b, c = await one.register(), await one.register(), await one.register()
    wa = await two.ws(a)  # node two loads a's friends and communities now: none
    await one.friends(a, b)
    cid = await one.community(b, a)

    async def say(cmd, dstid, content):
        frame = {"id": content, "cmd": cmd, "dstid": dstid, "media": 1, "content": content}
        await wa.send_str(orjson.dumps(frame).decode())
        return await recv(wa)

    assert (await say(10, b["id"], "to b"))["cmd"] == 20
    assert (await say(11, cid, "to room"))["cmd"] == 20
    assert (await say(10, c["id"], "to c"))["error"] == "not_friends"
    assert (await say(11, cid + 1000, "nowhere"))["error"] == "not_member"
    pair_rows = await one.call("/message/history", b["token"], cmd=10, dstid=a["id"])
    room_rows = await one.call("/message/history", b["token"], cmd=11, dstid=cid)
    assert [r["content"] for r in pair_rows["rows"]] == ["to b"]
    assert [r["content"] for r in room_rows["rows"]] == ["to room"]


async def test_profile_update_event_reaches_friends(api):
    a, b = await pair(api)
    wb = await api.ws(b)
    await api.call("/user/update", a["token"], nickname="Annie")
    event = await recv(wb, skip=())
    assert (event["event"], event["dstid"]) == ("profile_updated", a["id"])


async def test_online_flag(api):
    a, b = await pair(api)
    assert (await api.call("/user/find", b["token"], id=a["id"]))["data"]["online"] is False
    wa = await api.ws(a)
    await wa.send_str('{"cmd":0}')
    await recv(wa)
    assert (await api.call("/user/find", b["token"], id=a["id"]))["data"]["online"] is True
    rows = (await api.call("/contact/loadfriend", b["token"]))["rows"]
    assert rows[0]["online"] is True
    await wa.close()
    for _ in range(50):
        if not (await api.call("/user/find", b["token"], id=a["id"]))["data"]["online"]:
            break
        await asyncio.sleep(0.05)
    assert (await api.call("/user/find", b["token"], id=a["id"]))["data"]["online"] is False


async def test_logout_closes_that_sessions_sockets_with_1008(api):
    a, _ = await pair(api)
    other = (await api.call("/user/login", mobile=a["mobile"], passwd="secret-pass"))["data"]
    w1 = await api.ws(a)
    w2 = await api.ws({"id": a["id"], "token": other["token"]})
    await api.call("/user/logout", a["token"])
    await closed_with(w1, 1008)
    await w2.send_str('{"cmd":0}')
    assert await recv(w2) == {"cmd": 0}


# ---- conversations and receipts -------------------------------------------------------------


async def test_conversations_unread_and_receipts(api):
    a, b = await pair(api)
    cid = await api.community(a, b)
    wa, wb1, wb2 = await api.ws(a), await api.ws(b), await api.ws(b)
    for n in range(3):
        await wa.send_str(
            orjson.dumps({"cmd": 10, "dstid": b["id"], "media": 1, "content": f"p{n}"}).decode()
        )
        await recv(wa)
    await wa.send_str(orjson.dumps({"cmd": 11, "dstid": cid, "media": 1, "content": "g"}).decode())
    await recv(wa)
    await wb1.send_str(
        orjson.dumps({"cmd": 10, "dstid": a["id"], "media": 1, "content": "mine"}).decode()
    )
    while (await recv(wb1))["cmd"] != 20:  # a's messages reach wb1 too; wait for the ack
        pass
    rows = {
        (r["cmd"], r["dstid"]): r
        for r in (await api.call("/message/conversations", b["token"]))["rows"]
    }
    pair_row = rows[(10, a["id"])]
    assert (pair_row["last_seq"], pair_row["read_seq"], pair_row["unread"]) == (4, 0, 3)
    assert pair_row["last"]["content"] == "mine" and pair_row["last"]["seq"] == 4
    assert (rows[(11, cid)]["unread"], rows[(11, cid)]["last"]["content"]) == (1, "g")
    mine = {
        (r["cmd"], r["dstid"]): r
        for r in (await api.call("/message/conversations", a["token"]))["rows"]
    }
    assert mine[(10, b["id"])]["unread"] == 1 and mine[(11, cid)]["unread"] == 0

    body = await api.call("/message/read", b["token"], cmd=10, dstid=a["id"], seq=2)
    assert body["data"]["read_seq"] == 2
    assert await recv(wa, skip=(30, 10)) == {
        "cmd": 31,
        "kind": 10,
        "userid": b["id"],
        "dstid": b["id"],
        "seq": 2,
    }
    for ws in (wb1, wb2):
        assert await recv(ws, skip=(30, 20, 10, 11)) == {
            "cmd": 31,
            "kind": 10,
            "userid": b["id"],
            "dstid": a["id"],
            "seq": 2,
        }
    # backwards is a no-op, past the end is clamped
    assert (await api.call("/message/read", b["token"], cmd=10, dstid=a["id"], seq=1))["data"][
        "read_seq"
    ] == 2
    assert (await api.call("/message/read", b["token"], cmd=10, dstid=a["id"], seq=99))["data"][
        "read_seq"
    ] == 4
    rows = {
        (r["cmd"], r["dstid"]): r
        for r in (await api.call("/message/conversations", b["token"]))["rows"]
    }
    assert rows[(10, a["id"])]["unread"] == 0 and rows[(10, a["id"])]["read_seq"] == 4
    await api.call("/message/read", b["token"], cmd=11, dstid=cid, seq=1)
    assert await recv(wb2, skip=(30, 20, 10, 11)) == {
        "cmd": 31,
        "kind": 10,
        "userid": b["id"],
        "dstid": a["id"],
        "seq": 4,
    }
    assert await recv(wb2, skip=(30, 20, 10, 11)) == {
        "cmd": 31,
        "kind": 11,
        "userid": b["id"],
        "dstid": cid,
        "seq": 1,
    }
    c = await api.register()
    await api.call("/message/read", c["token"], cmd=11, dstid=cid, seq=1, status=403)
    await api.call("/message/read", b["token"], cmd=11, dstid=cid, status=400)


# ---- limits and close codes ------------------------------------------------------------------


async def test_frame_size_limit(api):
    a, b = await pair(api)
    ws = await api.ws(a)
    base = {"cmd": 10, "dstid": b["id"], "media": 100, "memo": "m" * 1000, "x": ""}
    pad = 16384 - len(orjson.dumps(base))
    exact = orjson.dumps({**base, "x": "y" * pad}).decode()
    assert len(exact.encode()) == 16384
    await ws.send_str(exact)
    assert (await recv(ws))["cmd"] == 20
    await ws.send_str(exact + " ")
    await closed_with(ws, 1009)


async def test_binary_frame_closes_1003(api):
    a, _ = await pair(api)
    ws = await api.ws(a)
    await ws.send_bytes(b"\x00\x01")
    await closed_with(ws, 1003)


async def test_invalid_utf8_closes_1007(api):
    a, _ = await pair(api)
    ws = await api.ws(a)
    await ws.send_frame(b'{"cmd":0,"x":"\xff\xfe"}', WSMsgType.TEXT)
    await closed_with(ws, 1007)


async def test_rate_limit_is_an_error_not_a_disconnect(make_server):
    api = await make_server(send_rate_per_s=1.0, send_burst=3)
    a, b = await pair(api)
    ws = await api.ws(a)
    for n in range(5):
        await ws.send_str(
            orjson.dumps(
                {"id": n, "cmd": 10, "dstid": b["id"], "media": 1, "content": "x"}
            ).decode()
        )
    frames = [await recv(ws) for _ in range(5)]
    assert [f["cmd"] for f in frames].count(20) == 3
    limited = [f for f in frames if f["cmd"] == 21]
    assert len(limited) == 2 and all(f["error"] == "rate_limited" for f in limited)
    await ws.send_str('{"cmd":0}')  # heartbeats do not count
    assert await recv(ws) == {"cmd": 0}


async def test_idle_connection_closed_1000(make_server, monkeypatch):
    monkeypatch.setattr(node_ws, "PING_INTERVAL_S", 60.0)  # no pings to answer in this test
    api = await make_server(idle_timeout_s=0.5)
    a, _ = await pair(api)
    ws = await api.ws(a, autoping=True)
    await closed_with(ws, 1000)


async def test_server_pings_and_a_pong_keeps_the_connection(make_server, monkeypatch):
    monkeypatch.setattr(node_ws, "PING_INTERVAL_S", 0.2)
    api = await make_server(idle_timeout_s=1.0)
    a, b = await pair(api)
    # A client that never answers: it sees the server's pings, then the idle close.
    silent = await api.ws(a, autoping=False)
    msg = await silent.receive(timeout=DEADLINE)
    assert msg.type is WSMsgType.PING
    await closed_with(silent, 1000)
    # A client that answers pings (browsers do; aiohttp's client does while it reads) but
    # sends nothing else stays connected well past the idle timeout, and gets its messages.
    quiet = await api.ws(b, autoping=True)
    reader = asyncio.create_task(recv(quiet))
    await asyncio.sleep(3.0)
    assert not reader.done(), reader.result()
    sender = await api.ws(a)
    await sender.send_str(
        orjson.dumps(
            {"id": "p1", "cmd": 10, "dstid": b["id"], "media": 1, "content": "hi"}
        ).decode()
    )
    assert (await reader)["content"] == "hi"


async def test_metrics_count_what_happened(make_server):
    started = time.monotonic()
    api = await make_server(send_rate_per_s=1.0, send_burst=1)
    a, b = await pair(api)
    wa, wb = await api.ws(a), await api.ws(b)
    for n in range(2):
        await wa.send_str(
            orjson.dumps(
                {"id": n, "cmd": 10, "dstid": b["id"], "media": 1, "content": "m"}
            ).decode()
        )
    assert sorted([(await recv(wa))["cmd"] for _ in range(2)]) == [20, 21]
    await recv(wb)
    await wa.send_str("{bad")
    await recv(wa)
    resp = await api.client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    lines = set(text.splitlines())
    for line in (
        "lanchat_connections 2.0",
        "lanchat_messages_stored_total 1.0",
        "lanchat_rate_limited_total 1.0",
        "lanchat_frames_rejected_total 2.0",
        "lanchat_frames_in_total 3.0",
        "lanchat_ack_latency_seconds_count 1.0",
        "lanchat_queue_overflows_total 0.0",
    ):
        assert line in lines, (line, text)
    assert "lanchat_db_errors_total 0.0" in lines
    # the writer's time on its one batch: some, and less than the test has run
    assert "lanchat_commit_seconds_count 1.0" in lines
    (busy,) = [x for x in lines if x.startswith("lanchat_commit_seconds_sum ")]
    assert 0 < float(busy.split()[1]) < time.monotonic() - started
    # the write-ahead log's checkpoints are SQLite's alone
    sqlite = api.settings.db.startswith("sqlite:")
    assert ("# TYPE lanchat_sqlite_wal_pages gauge" in lines) is sqlite
    assert ("lanchat_sqlite_checkpoint_errors_total 0.0" in lines) is sqlite


async def test_metrics_time_garbage_collections(make_server):
    """Each collection's pause is counted while the node runs, next to Python's own GC figures;
    the timing stops with the node."""
    api = await make_server()

    async def pauses() -> float:
        text = await (await api.client.get("/metrics")).text()
        assert 'python_gc_collections_total{generation="2"}' in text, text
        (line,) = [x for x in text.splitlines() if x.startswith("lanchat_gc_pause_seconds_count")]
        return float(line.split()[1])

    before = await pauses()
    for _ in range(3):
        gc.collect()
    assert await pauses() >= before + 3
    pauses = api.client.server.app[METRICS].gc_pauses
    assert pauses in gc.callbacks
    await api.close()
    assert pauses not in gc.callbacks


async def test_a_closed_connection_is_freed_without_the_cycle_collector(api):
    """Once a connection ends, nothing of it waits for a garbage collection: with the
    collector off, no Conn, writer or WebSocketResponse of the server is left in memory."""
    from aiohttp import web

    from node.hub import Conn

    def leftovers() -> list[str]:
        kinds = (Conn, node_ws.Flusher, web.WebSocketResponse)
        return [type(o).__name__ for o in gc.get_objects() if isinstance(o, kinds)]

    a, b = await pair(api)
    hub = api.client.server.app[node_ws.HUB]
    gc.collect()
    gc.disable()
    try:
        for user in (a, b, a):
            ws = await api.ws(user)
            await ws.send_str('{"cmd":0}')
            assert (await recv(ws))["cmd"] == 0
            await ws.close()
        left = leftovers()
        for _ in range(100):  # the handlers finish just after the close handshake
            if not left:
                break
            await asyncio.sleep(0.05)
            left = leftovers()
        assert not hub.conns
        assert left == []
    finally:
        gc.enable()
