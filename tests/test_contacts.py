"""Friends and communities: every endpoint's success path and each error status."""

from __future__ import annotations

import pytest


async def test_addfriend_is_mutual(api):
    a, b = await api.register("Ann"), await api.register("Bob")
    await api.call("/contact/addfriend", a["token"], dstid=b["id"], userid=a["id"])
    rows_a = (await api.call("/contact/loadfriend", a["token"]))["rows"]
    rows_b = await api.call("/contact/loadfriend", b["token"], method="GET")
    assert [r["id"] for r in rows_a] == [b["id"]]
    assert [r["id"] for r in rows_b["rows"]] == [a["id"]] and rows_b["total"] == 1
    assert set(rows_a[0]) == {"id", "nickname", "avatar", "sex", "memo", "online"}


async def test_addfriend_errors(api):
    a, b = await api.register(), await api.register()
    assert (await api.call("/contact/addfriend", a["token"], dstid=99999, status=404))[
        "error"
    ] == "not_found"
    assert (await api.call("/contact/addfriend", a["token"], dstid=a["id"], status=400))[
        "error"
    ] == "bad_request"
    await api.call("/contact/addfriend", a["token"], status=400)
    await api.call("/contact/addfriend", dstid=b["id"], status=401)
    await api.call("/contact/addfriend", a["token"], dstid=b["id"], userid=b["id"], status=403)
    await api.call("/contact/addfriend", a["token"], dstid=b["id"])
    assert (await api.call("/contact/addfriend", a["token"], dstid=b["id"], status=409))[
        "error"
    ] == "conflict"
    await api.call("/contact/addfriend", b["token"], dstid=a["id"], status=409)


async def test_empty_friend_list(api):
    a = await api.register()
    assert await api.call("/contact/loadfriend", a["token"]) == {
        "code": 0,
        "msg": "",
        "rows": [],
        "total": 0,
    }


async def test_delfriend_ends_it_for_both(api):
    a, b = await api.register(), await api.register()
    await api.friends(a, b)
    await api.call("/contact/delfriend", b["token"], dstid=a["id"])
    assert (await api.call("/contact/loadfriend", a["token"]))["rows"] == []
    assert (await api.call("/contact/loadfriend", b["token"]))["rows"] == []
    body = await api.call("/contact/delfriend", a["token"], dstid=b["id"], status=404)
    assert body["error"] == "not_found"
    await api.call("/contact/delfriend", a["token"], status=400)
    await api.call("/contact/delfriend", dstid=b["id"], status=401)
    await api.friends(a, b)  # friends again after a break


async def test_createcommunity_returns_it_with_creator_as_member(api):
    a = await api.register()
    body = await api.call(
        "/contact/createcommunity",
        a["token"],
        name="Class 3",
        cate=2,
        memo="maths",
        ownerid=a["id"],
    )
    data = body["data"]
    assert data["id"] > 0 and data["name"] == "Class 3" and data["ownerid"] == a["id"]
    assert data["cate"] == 2 and data["memo"] == "maths" and data["members"] == 1
    assert isinstance(data["createat"], int)
    rows = (await api.call("/contact/loadcommunity", a["token"]))["rows"]
    assert [(r["id"], r["members"]) for r in rows] == [(data["id"], 1)]
    assert set(rows[0]) == {"id", "name", "ownerid", "icon", "cate", "memo", "createat", "members"}
    members = (await api.call("/contact/loadmembers", a["token"], dstid=data["id"]))["rows"]
    assert [m["id"] for m in members] == [a["id"]]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"name": ""},
        {"name": "x" * 31},
        {"name": "ok", "cate": 5},
        {"name": "ok", "cate": -1},
        {"name": "ok", "icon": "file:///etc/passwd"},
        {"name": "   "},
    ],
)
async def test_createcommunity_bad_input_is_400(api, fields):
    a = await api.register()
    assert (await api.call("/contact/createcommunity", a["token"], status=400, **fields))[
        "error"
    ] == "bad_request"


async def test_createcommunity_auth_errors(api):
    a, b = await api.register(), await api.register()
    await api.call("/contact/createcommunity", name="x", status=401)
    await api.call("/contact/createcommunity", a["token"], name="x", ownerid=b["id"], status=403)


async def test_community_limit_per_owner(make_server):
    api = await make_server(max_communities=2)
    a = await api.register()
    for i in range(2):
        await api.call("/contact/createcommunity", a["token"], name=f"c{i}")
    body = await api.call("/contact/createcommunity", a["token"], name="c3", status=403)
    assert body["error"] == "forbidden"


async def test_join_and_members(api):
    a, b, c = await api.register("A"), await api.register("B"), await api.register("C")
    cid = await api.community(a)
    await api.call("/contact/joincommunity", b["token"], dstid=cid)
    rows = (await api.call("/contact/loadcommunity", b["token"]))["rows"]
    assert rows[0]["id"] == cid and rows[0]["members"] == 2
    members = (await api.call("/contact/loadmembers", b["token"], dstid=cid))["rows"]
    assert [m["id"] for m in members] == [a["id"], b["id"]]
    assert "mobile" not in members[0] and "token" not in members[0]
    assert (await api.call("/contact/loadmembers", c["token"], dstid=cid, status=403))[
        "error"
    ] == "forbidden"
    assert (await api.call("/contact/joincommunity", b["token"], dstid=cid, status=409))[
        "error"
    ] == "conflict"
    assert (await api.call("/contact/joincommunity", c["token"], dstid=99999, status=404))[
        "error"
    ] == "not_found"
    await api.call("/contact/joincommunity", c["token"], status=400)
    await api.call("/contact/joincommunity", dstid=cid, status=401)
    await api.call("/contact/loadmembers", c["token"], dstid=99999, status=404)
    await api.call("/contact/loadmembers", c["token"], status=400)


async def test_leave_passes_ownership_and_last_out_deletes(api):
    a, b, c = await api.register(), await api.register(), await api.register()
    cid = await api.community(a, b, c)
    await api.call("/contact/leavecommunity", a["token"], dstid=cid)
    rows = (await api.call("/contact/loadcommunity", b["token"]))["rows"]
    assert rows[0]["ownerid"] == b["id"] and rows[0]["members"] == 2
    assert (await api.call("/contact/leavecommunity", a["token"], dstid=cid, status=404))[
        "error"
    ] == "not_found"
    await api.call("/contact/leavecommunity", b["token"], dstid=cid)
    await api.call("/contact/leavecommunity", c["token"], dstid=cid)
    await api.call("/contact/joincommunity", a["token"], dstid=cid, status=404)
    await api.call("/contact/leavecommunity", a["token"], status=400)
    await api.call("/contact/leavecommunity", dstid=cid, status=401)
