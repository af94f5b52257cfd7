"""Presence for WebSocket consumers: who is in the room, kept by the connections themselves.

Mix :class:`PresenceMixin` into an async WebSocket consumer (plain or JSON). Either name the
groups on the class::

    class RoomConsumer(PresenceMixin, AsyncJsonWebsocketConsumer):
        presence_groups = ["lobby"]        # joined and tracked before connect() runs

or track a group chosen at connect time::

    class ChatConsumer(PresenceMixin, AsyncJsonWebsocketConsumer):
        async def connect(self):
            self.room = "chat_" + self.scope["url_route"]["kwargs"]["room"]
            await self.track_presence(self.room)   # joins the group, adds this connection
            await self.accept()                    # ... then the client gets the member list

Tracking a group joins it (``group_add``, unless already joined), adds this connection's entry
with :meth:`~PresenceMixin.presence_info` (by default the scope's user: ``{"user": pk,
"name": username}`` for an authenticated user, ``{}`` for anyone else; override it to choose)
and removes the entry when the connection ends, however it ends (a disconnect, an error, a
cancellation), before the group is left.

Frames sent to the client (JSON text frames, through :meth:`~PresenceMixin.send_presence`;
override it to filter, rename, or send nothing), one set per tracked group:

* ``{"type": "presence.state", "group": g, "you": key, "members": {key: info, ...}}``: the
  whole list, once, right after the accept (after a resume report and replay, when the
  consumer also resumes). ``you`` is this connection's own key.
* ``{"type": "presence.join", "group": g, "members": {key: info, ...}}`` and
  ``{"type": "presence.leave", ...}``: the changes, coalesced by the layer (a group must match
  the layer's ``CONFIG["presence"]`` for these to be sent at all, see
  :mod:`roomcast.layers.presence`). A client keeps a map: state replaces it, join sets
  entries, leave deletes them.

A ``key`` is an opaque 16-hex-digit digest of the connection's channel name: the same in
every process, stable for the connection's life, and no channel name leaks to clients. Events
for groups this connection does not track are ignored. Override :meth:`presence_join` /
:meth:`presence_leave` (the layer's messages, with channel names) to react otherwise.

Faults: a layer that cannot be reached while tracking closes the connection with 1013 (the
consumers' rule for a layer that is down); removal on disconnect never fails (the Redis layer
finishes it when Redis is back). A gateway killed with SIGKILL removes nothing itself: its
entries vanish with its heartbeat and their leave events are sent by the process that sweeps
them (:mod:`roomcast.layers.redis.presence`); a gateway restart (SIGTERM) disconnects its
clients, which removes their entries at once, and a reconnecting client is a new connection
with a new key and a fresh ``presence.state``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from roomcast.layers import BaseChannelLayer

from .base import Message, _consumer_name
from .websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer, Headers

__all__ = ["PRESENCE_STATE", "PresenceMixin", "presence_key"]

logger = logging.getLogger("roomcast.consumers")

PRESENCE_STATE = "presence.state"


def presence_key(channel: str) -> str:
    """The opaque key clients see for ``channel`` (16 hex digits, the same in every process)."""
    return hashlib.blake2b(channel.encode(), digest_size=8).hexdigest()


class PresenceMixin(AsyncWebsocketConsumer):
    """Adds the connection to the presence of its groups (see the module)."""

    presence_groups: list[str] | None = None
    """Groups joined and tracked when the connection starts, before ``connect()``."""

    def _tracked(self) -> dict[str, bool]:
        """Tracked group -> whether its ``presence.state`` has been sent."""
        tracked: dict[str, bool] = self.__dict__.setdefault("_presence_tracked", {})
        return tracked

    # Hooks -----------------------------------------------------------------------------

    async def presence_info(self, group: str) -> dict[str, Any]:
        """This connection's info in ``group``: the scope's authenticated user, else ``{}``."""
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            return {}
        pk = getattr(user, "pk", None)
        info: dict[str, Any] = {"user": pk if isinstance(pk, (str, int)) else str(pk)}
        get_username = getattr(user, "get_username", None)
        info["name"] = str(get_username() if callable(get_username) else user)
        return info

    async def send_presence(self, frame: dict[str, Any]) -> None:
        """Send one presence frame to the client as JSON text (``send_json`` for JSON
        consumers, so their ``encode_json`` applies)."""
        if isinstance(self, AsyncJsonWebsocketConsumer):
            await self.send_json(frame)
        else:
            await self.send(text_data=json.dumps(frame))

    # Tracking --------------------------------------------------------------------------

    async def track_presence(self, group: str, info: dict[str, Any] | None = None) -> None:
        """Join ``group`` (if not yet joined) and add this connection with ``info`` (default:
        :meth:`presence_info`). Before the accept, the client gets the member list right after
        it; after, at once. Calling it again updates the info."""
        layer = self._group_layer()
        if info is None:
            info = await self.presence_info(group)
        joined = self._joined()
        if group not in joined:
            await layer.group_add(group, self.channel_name)
            joined.append(group)
        tracked = self._tracked()
        first = group not in tracked
        tracked.setdefault(group, False)
        await layer.presence_add(group, self.channel_name, info)
        if first and self.__dict__.get("_ws_accepted"):
            await self._send_state(layer, group)

    async def untrack_presence(self, group: str) -> None:
        """Remove this connection from ``group``'s presence (it stays in the group)."""
        if self._tracked().pop(group, None) is not None:
            await self._group_layer().presence_remove(group, self.channel_name)

    async def _send_state(self, layer: BaseChannelLayer, group: str) -> None:
        members = await layer.presence(group)
        self._tracked()[group] = True
        await self.send_presence(
            {
                "type": PRESENCE_STATE,
                "group": group,
                "you": presence_key(self.channel_name),
                "members": {presence_key(channel): info for channel, info in members.items()},
            }
        )

    # The consumer's life ---------------------------------------------------------------

    async def _join_groups(self) -> None:
        await super()._join_groups()
        for group in self.presence_groups or ():
            await self.track_presence(group)

    async def accept(self, subprotocol: str | None = None, headers: Headers | None = None) -> None:
        """Accept, then send the member list of every group tracked so far."""
        await super().accept(subprotocol, headers)
        layer = self._group_layer() if self._tracked() else None
        for group, sent in list(self._tracked().items()):
            if not sent and layer is not None:
                await self._send_state(layer, group)

    async def _leave_groups(self) -> None:
        """Remove this connection's entries first, then leave the groups."""
        tracked = self._tracked()
        layer = getattr(self, "channel_layer", None)
        while tracked and layer is not None:
            group, _ = tracked.popitem()
            try:
                await layer.presence_remove(group, self.channel_name)
            except Exception:  # leaving the groups must still happen
                logger.exception(
                    "%s: removing its presence in %r failed", _consumer_name(self), group
                )
        await super()._leave_groups()

    # The layer's events ----------------------------------------------------------------

    def _event_frame(self, event: Message) -> dict[str, Any] | None:
        group = event.get("group")
        members = event.get("members")
        if group not in self._tracked() or not isinstance(members, dict):
            return None
        return {
            "type": event["type"],
            "group": group,
            "members": {presence_key(channel): info for channel, info in members.items()},
        }

    async def presence_join(self, event: Message) -> None:
        """A ``presence.join`` from the layer: forwarded to the client (see the module)."""
        frame = self._event_frame(event)
        if frame is not None:
            await self.send_presence(frame)

    async def presence_leave(self, event: Message) -> None:
        """A ``presence.leave`` from the layer: forwarded to the client (see the module)."""
        frame = self._event_frame(event)
        if frame is not None:
            await self.send_presence(frame)
