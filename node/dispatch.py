"""Dispatch: validates client frames per cmd and media and builds the server's frames. Pure logic.

Nothing here performs I/O: the WebSocket glue (ws.py) hands in text and the sender's user id,
and gets back what to do; the tests exercise every rule without a socket.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import orjson

CMD_HEARTBEAT = 0
CMD_SINGLE = 10
CMD_GROUP = 11
CMD_ACK = 20
CMD_ERROR = 21
CMD_EVENT = 30
CMD_RECEIPT = 31

MEDIA_TEXT, MEDIA_NEWS, MEDIA_VOICE, MEDIA_IMAGE, MEDIA_REDPACKET = 1, 2, 3, 4, 5
MEDIA_EMOJI, MEDIA_LINK, MEDIA_VIDEO, MEDIA_CARD, MEDIA_CUSTOM = 6, 7, 8, 9, 100
MEDIAS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 100})

MAX_CONTENT = 4000
MAX_EMOJI = 64
MAX_MEMO = 1000
MAX_URL = 2048
MAX_ID = 64
MAX_AMOUNT = 1_000_000_000
MAX_VOICE_S = 600

URL = re.compile(r"(https?://[^\s\x00-\x1f<>\"']+|/mnt/[\w.\-]+)")
HEARTBEAT_REPLY = b'{"cmd":0}'

# media -> fields it requires (besides the general rules every field follows)
REQUIRED: dict[int, tuple[str, ...]] = {
    MEDIA_TEXT: ("content",),
    MEDIA_NEWS: ("content", "url"),
    MEDIA_VOICE: ("url", "amount"),
    MEDIA_IMAGE: ("url",),
    MEDIA_REDPACKET: ("amount",),
    MEDIA_LINK: ("url",),
    MEDIA_VIDEO: ("url",),
    MEDIA_CARD: ("content",),
}


class FrameError(Exception):
    """A frame broke a rule; becomes a cmd 21 frame and the connection stays open."""

    def __init__(self, code: str, msg: str, frame_id: Any = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.frame_id = frame_id


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Chat:
    """A valid message: the conversation it belongs to and the fields that will be stored."""

    cmd: int
    dstid: int
    frame_id: Any  # as the client sent it (echoed in the ack); None when absent
    client_id: str | None  # frame_id as a string: the idempotency key
    fields: dict[str, Any]  # the sender's fields, unknown ones dropped, userid set by us


def parse(text: str | bytes, user: int) -> Heartbeat | Chat:
    """Validate one client frame from `user`. Raises FrameError naming the broken rule."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError("bad_json", "the frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("bad_frame", "the frame must be a JSON object")
    frame_id = _frame_id(frame.get("id"))
    try:
        return _parse(frame, frame_id, user)
    except FrameError as exc:
        exc.frame_id = frame_id
        raise


def _frame_id(value: Any) -> Any:
    if value is None or (isinstance(value, str) and 0 < len(value) <= MAX_ID):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return value
    raise FrameError("bad_frame", f"id must be an integer or a string of 1-{MAX_ID} characters")


def _parse(frame: dict[str, Any], frame_id: Any, user: int) -> Heartbeat | Chat:
    sender = frame.get("userid")
    if sender is not None and _as_int(sender, "userid") != user:
        raise FrameError("spoofed_sender", "userid must be your own user id")
    cmd = frame.get("cmd")
    if cmd is None:
        raise FrameError("missing_field", "cmd is required")
    if not isinstance(cmd, int) or isinstance(cmd, bool) or cmd not in (0, 10, 11):
        raise FrameError("bad_cmd", "cmd must be 0 (heartbeat), 10 (one-to-one) or 11 (group)")
    if cmd == CMD_HEARTBEAT:
        return Heartbeat()
    if frame.get("dstid") is None:
        raise FrameError("missing_field", "dstid is required")
    dstid = _as_int(frame["dstid"], "dstid")
    if dstid <= 0:
        raise FrameError("bad_frame", "dstid must be a positive integer")
    media = frame.get("media")
    if media is None:
        raise FrameError("missing_field", "media is required")
    if not isinstance(media, int) or isinstance(media, bool) or media not in MEDIAS:
        raise FrameError("bad_media", "media must be one of 1-9 or 100")
    fields: dict[str, Any] = {"cmd": cmd, "dstid": dstid, "media": media, "userid": user}
    if frame_id is not None:
        fields["id"] = frame_id
    _general_fields(frame, fields)
    _media_rules(media, fields)
    client_id = None if frame_id is None else str(frame_id)
    return Chat(cmd, dstid, frame_id, client_id, fields)


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value):
        return int(value)
    raise FrameError("bad_frame", f"{name} must be an integer")


def _general_fields(frame: dict[str, Any], fields: dict[str, Any]) -> None:
    """The rules every media kind follows; empty strings count as absent."""
    for name, limit in (("content", MAX_CONTENT), ("memo", MAX_MEMO)):
        value = frame.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, int) and not isinstance(value, bool) and name == "content":
            value = str(value)  # a contact card's user id may come as a number
        if not isinstance(value, str):
            raise FrameError("bad_frame", f"{name} must be a string")
        if len(value) > limit:
            raise FrameError("too_long", f"{name} must be at most {limit} characters")
        fields[name] = value
    for name in ("url", "pic"):
        value = frame.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise FrameError("bad_frame", f"{name} must be a string")
        if len(value) > MAX_URL:
            raise FrameError("too_long", f"{name} must be at most {MAX_URL} characters")
        if not URL.fullmatch(value):
            raise FrameError("bad_url", f"{name} must start with http://, https:// or /mnt/")
        fields[name] = value
    amount = frame.get("amount")
    if amount is not None:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise FrameError("bad_frame", "amount must be an integer")
        if not 0 <= amount <= MAX_AMOUNT:
            raise FrameError("bad_frame", f"amount must be between 0 and {MAX_AMOUNT}")
        fields["amount"] = amount


def _media_rules(media: int, fields: dict[str, Any]) -> None:
    for name in REQUIRED.get(media, ()):
        if name not in fields:
            raise FrameError("missing_field", f"{name} is required for media {media}")
    if media == MEDIA_TEXT and not fields["content"].strip():
        raise FrameError("missing_field", "content must not be blank")
    elif media == MEDIA_VOICE and not 1 <= fields["amount"] <= MAX_VOICE_S:
        raise FrameError("bad_frame", f"amount (seconds) must be 1-{MAX_VOICE_S} for voice")
    elif media == MEDIA_REDPACKET and fields["amount"] <= 0:
        raise FrameError("bad_frame", "amount (cents) must be positive for a red packet")
    elif media == MEDIA_EMOJI:
        if "content" not in fields and "url" not in fields:
            raise FrameError("missing_field", "content or url is required for an emoji")
        if len(fields.get("content", "")) > MAX_EMOJI:
            raise FrameError("too_long", f"emoji content must be at most {MAX_EMOJI} characters")
    elif media == MEDIA_CARD and not (
        fields["content"].isdigit() and fields["content"].isascii() and int(fields["content"]) > 0
    ):
        raise FrameError("bad_frame", "content must be the card's user id, a positive integer")


def pair_key(a: int, b: int) -> tuple[int, int, int]:
    """The conversation of two friends, the same from both sides."""
    return (CMD_SINGLE, min(a, b), max(a, b))


def group_key(cid: int) -> tuple[int, int, int]:
    return (CMD_GROUP, cid, 0)


def conversation_key(chat: Chat) -> tuple[int, int, int]:
    sender = chat.fields["userid"]
    return pair_key(sender, chat.dstid) if chat.cmd == CMD_SINGLE else group_key(chat.dstid)


def check_allowed(chat: Chat, friends: Container[int], groups: Container[int]) -> None:
    """The sender may write to a friend (cmd 10) or a community it belongs to (cmd 11)."""
    if chat.cmd == CMD_SINGLE and chat.dstid not in friends:
        raise FrameError("not_friends", "you can only message your friends", chat.frame_id)
    if chat.cmd == CMD_GROUP and chat.dstid not in groups:
        raise FrameError("not_member", "you are not a member of this community", chat.frame_id)


def delivered(fields: dict[str, Any], mid: int, seq: int, createat: int) -> dict[str, Any]:
    """A stored message as recipients see it."""
    return {**fields, "mid": mid, "seq": seq, "createat": createat}


def ack_frame(frame_id: Any, mid: int, seq: int, createat: int) -> bytes:
    return orjson.dumps(
        {"cmd": CMD_ACK, "id": frame_id, "mid": mid, "seq": seq, "createat": createat}
    )


def error_frame(code: str, msg: str, frame_id: Any = None) -> bytes:
    return orjson.dumps({"cmd": CMD_ERROR, "id": frame_id, "error": code, "msg": msg})


def receipt_frame(kind: int, reader: int, dstid: int, seq: int) -> dict[str, Any]:
    return {"cmd": CMD_RECEIPT, "kind": kind, "userid": reader, "dstid": dstid, "seq": seq}
