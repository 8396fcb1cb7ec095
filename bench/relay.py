"""The ceiling of the stack: a bare aiohttp WebSocket relay. No auth, no storage, no bus."""

import sys

import orjson
from aiohttp import WSMsgType, web

sockets: dict[str, set] = {}


async def chat(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    uid = request.query["id"]
    sockets.setdefault(uid, set()).add(ws)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            dst = str(orjson.loads(msg.data)["dstid"])
            for peer in sockets.get(dst, ()):
                await peer.send_str(msg.data)
    sockets[uid].discard(ws)
    return ws


app = web.Application()
app.router.add_get("/chat", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
