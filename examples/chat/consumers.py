"""The chat consumer: one WebSocket per member of a room; the room is a channel-layer group.

The protocol the page (``static/index.html``) speaks; any WebSocket client may speak it too.

Client -> server. The URL ``/ws/chat/<room>/`` with optional query parameters:

* ``name``: the display name (1 to 40 characters, no control characters; default
  ``anonymous``);
* ``client``: a random id the browser keeps (8 to 64 of ``A-Z a-z 0-9 _ -``): the tabs of one
  browser are one user in the member list, and see each other's messages as their own;
  without it, each connection is a user of its own;
* ``presence=1``: send me the member list and its changes (a bot, or the tests, may skip it);
* ``since``: resume (see :mod:`roomcast.consumers.resume`): ``since=`` (empty) on the first
  connection gets the room's last ``CHAT_RECENT`` messages (50 by default), ``since=<position>``
  on a reconnection gets every message after it.

Frames are JSON: ``{"message": "text"}`` says something (at most 2,000 characters kept).

Server -> client, JSON text frames:

* ``{"type": "message", "message": ..., "name": ..., "user": ..., "time": <ms since the
  epoch, the server's clock>, "mine": <said by this browser>, "position": "<epoch>:<offset>"}``
  (``position`` when the room keeps history, which the page keeps to resume);
* ``{"type": "resume", ...}`` before a replay (:mod:`roomcast.consumers.resume`);
* with ``presence=1``: ``presence.state`` after the accept (and after any replay), then
  ``presence.join``/``presence.leave`` (:mod:`roomcast.consumers.presence`); each member's
  info is ``{"user": ..., "name": ...}``.

Close codes:

==========  ==============================================================================
``4400``    refused: the room name or the name is invalid; the reason says which and why
            (one warning line in the server's log). Retrying the same URL cannot help.
``1008``    refused: a malformed ``since`` (from :mod:`roomcast.consumers.resume`).
``1013``    the channel layer is unavailable: try again later.
``1001``    the gateway is going away (SIGTERM): reconnect, to another one behind a balancer.
``1012``    the gateway is restarting: reconnect.
==========  ==============================================================================
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs

from roomcast.consumers import AsyncJsonWebsocketConsumer
from roomcast.consumers.presence import PresenceMixin
from roomcast.consumers.resume import ResumableGroupsMixin, ResumeFrom, position_text
from roomcast.layers.history import StreamPosition

from . import settings

ROOM = re.compile(r"[A-Za-z0-9._-]{1,50}")
CLIENT = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_NAME = 40
MAX_MESSAGE = 2000
CLOSE_REFUSED = 4400
"""The close code for a request the server will never accept (the reason says why)."""
ROOM_RULE = "use 1 to 50 letters, digits, '.', '_' or '-'"

logger = logging.getLogger("examples.chat")


def _shown(value: str, limit: int = 30) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def check_name(raw: str | None) -> str:
    """The display name from the query string; ``ValueError`` saying what is wrong."""
    if raw is None:
        return "anonymous"
    name = " ".join(raw.split())
    if not name:
        raise ValueError("invalid name: it is empty")
    if len(name) > MAX_NAME:
        raise ValueError(f"invalid name: {len(name)} characters, the limit is {MAX_NAME}")
    if any(not character.isprintable() for character in name):
        raise ValueError("invalid name: it holds control characters")
    return name


class ChatConsumer(PresenceMixin, ResumableGroupsMixin, AsyncJsonWebsocketConsumer):
    """Joins ``chat_<room>``, broadcasts what its client says, relays what the room says."""

    group = ""
    name = "anonymous"
    user = ""
    wants_presence = False

    def _query(self, key: str) -> str | None:
        query = bytes(self.scope.get("query_string", b"")).decode("latin-1")
        values = parse_qs(query, keep_blank_values=True).get(key)
        return values[-1] if values else None

    async def connect(self) -> None:
        room = self.scope["url_route"]["kwargs"]["room"]
        client = self._query("client")
        try:
            if not ROOM.fullmatch(room):
                raise ValueError(f"invalid room name {_shown(room)}: {ROOM_RULE}")
            self.name = check_name(self._query("name"))
            if client is not None and not CLIENT.fullmatch(client):
                raise ValueError("invalid client id: use 8 to 64 letters, digits, '_' or '-'")
        except ValueError as exc:
            await self.refuse(str(exc))
            return
        secret = client or self.channel_name  # a user per browser, or per connection
        self.user = hashlib.blake2b(secret.encode(), digest_size=6, person=b"chat-user").hexdigest()
        self.wants_presence = self._query("presence") == "1"
        self.group = f"chat_{room}"
        # Joined, the history read and this connection added to the room's presence, all
        # before the handshake completes; the resume report, the replay and the member list
        # follow the accept. All undone when the connection ends.
        await self.resume_group(self.group)
        await self.track_presence(self.group, {"user": self.user, "name": self.name})
        await self.accept()

    async def refuse(self, reason: str) -> None:
        """Accept, then close with :data:`CLOSE_REFUSED` and ``reason``: a browser sees the
        code and the reason (a refused handshake shows it nothing but 1006)."""
        logger.warning(
            "refused a chat connection to %s: %s (closing with %d)",
            self.scope.get("path"),
            reason,
            CLOSE_REFUSED,
        )
        await self.accept()
        await self.close(code=CLOSE_REFUSED, reason=reason[:120])

    async def resume_from(self, group: str) -> ResumeFrom | None:
        """As the mixin's, but a first connection (``since=``) starts ``CHAT_RECENT``
        messages back, so that a newcomer sees what the room was just saying."""
        request = await super().resume_from(group)
        layer: Any = self.channel_layer
        if request is None or request.since is not None or layer.history_policy(group) is None:
            return request
        position = await layer.group_position(group)
        return ResumeFrom(
            StreamPosition(position.epoch, max(0, position.offset - settings.CHAT_RECENT))
        )

    async def send_presence(self, frame: dict[str, Any]) -> None:
        if self.wants_presence:
            await super().send_presence(frame)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        message = content.get("message") if isinstance(content, dict) else None
        if isinstance(message, str) and message.strip():
            await self.channel_layer.group_send(
                self.group,
                {
                    "type": "chat.message",
                    "message": message[:MAX_MESSAGE],
                    "name": self.name,
                    "user": self.user,
                    "time": int(time.time() * 1000),
                },
            )

    async def chat_message(self, event: dict[str, Any]) -> None:
        user = str(event.get("user") or "")
        frame = {
            "type": "message",
            "message": event["message"],
            "name": event.get("name") or "anonymous",
            "user": user,
            "time": event.get("time"),
            "mine": bool(user) and user == self.user,
        }
        position = position_text(event)
        if position is not None:
            frame["position"] = position
        await self.send_json(frame)
