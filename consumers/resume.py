"""Resumable WebSocket consumers: replay what a client missed from a group's history, then go live.

Mix :class:`ResumableGroupsMixin` into an async WebSocket consumer (plain or JSON) and call
:meth:`~ResumableGroupsMixin.resume_group` from ``connect()``::

    class ChatConsumer(ResumableGroupsMixin, AsyncJsonWebsocketConsumer):
        async def connect(self):
            await self.resume_group("chat_lobby")   # joins now; replays after the accept
            await self.accept()

        async def chat_message(self, event):          # replayed and live messages alike
            await self.send_json({"message": event["message"], "position": position_text(event)})

The group must keep history on the layer (``CONFIG["history"]``, see
:mod:`roomcast.layers.history`); a group without it is simply joined, as ``group_add`` would.

Wire protocol (the default hooks; ``docs/history.md`` has the whole story):

* **Client → server**: the query string of the WebSocket URL.
  ``?since=<epoch>:<offset>``: the position of the last message of the group the client has;
  ``?since=`` (empty): the client has none yet (a first connection) and wants one;
  no ``since``: the client does not resume, and hears no more than before (no report).
  Override :meth:`~ResumableGroupsMixin.resume_from` to read it elsewhere (a cookie, a first
  message); the default reads one position, so it serves one resumed group per connection.
* **Server → client**, once per resumed group, before any message of that group: a JSON text
  frame ``{"type": "resume", "group": ..., "position": "<epoch>:<offset>", "recovered": bool,
  "replayed": N}``, then the N missed messages through the consumer's own handlers, then the
  live ones. ``recovered`` is false when messages are missing: the history was lost (new epoch)
  or already trimmed, or ``resume_limit`` cut the replay; the replay is then the newest
  retained messages. A first connection (``since=``) gets ``recovered: true`` and nothing
  replayed. The client keeps the position of each message it shows and sends the last one
  back on its next connection.
* A later gap (the member's buffer was full and the layer dropped a message, or the epoch
  changed under a live connection) is filled from history before the message that showed it;
  when it cannot be filled, another report with ``"recovered": false`` comes first.
* **Bad input**: a malformed ``since`` (or one given twice) closes the connection with 1008
  and a reason naming the problem (right after the accept, so the client can read it). A
  well-formed position the group never gave (another group's epoch, an offset ahead of the
  group's) cannot tell forged from lost: it is answered ``recovered: false`` with this group's
  own retained history, never anything of another group (the group is the consumer's choice,
  never the client's).
* **Layer down** while resuming: close 1013 (try again later) right after the accept, one
  warning in the log.

No gap, no duplicate: the consumer joins the group *before* reading the history, so a message
sent meanwhile is either in the history answer or arrives live afterwards (buffered in the
consumer's channel while the replay runs; messages are handled one at a time); a live copy
whose offset is at or below the last one delivered is dropped. A first connection reads the
position before joining instead, so a message sent in between shows up as a gap and is
filled from history.

Faults: a reconnect is a resume. A gateway restart (SIGTERM closes with 1001/1012) is a
reconnect to another process: on the in-memory layer the history died with the old process
(``recovered: false``); on a shared layer the client resumes where it was. A kill -9 is the
same for the client (it sees 1006). A failover of the layer's server shows as a gap or a new
epoch, handled as above. Async consumers only: sync consumers would block in every handler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from roomcast.layers import BaseChannelLayer
from roomcast.layers.exceptions import HistoryNotEnabled, InvalidPosition, LayerConnectionError
from roomcast.layers.history import POSITION_KEY, HistoryResult, StreamPosition, message_position

from .base import Message, _consumer_name
from .websocket import AsyncWebsocketConsumer, Headers

__all__ = ["ResumableGroupsMixin", "ResumeFrom", "position_text"]

logger = logging.getLogger("roomcast.consumers")

CLOSE_POLICY = 1008  # a position we refuse
CLOSE_TRY_AGAIN = 1013  # the layer is down
MAX_REASON = 123  # bytes a close frame's reason may take


class ResumeFrom(NamedTuple):
    """A client's request to resume: ``since`` its last position, None if it has none yet."""

    since: StreamPosition | None


def position_text(message: Message) -> str | None:
    """``"<epoch>:<offset>"`` of a history group's message (what a client keeps), else None."""
    stamped = message_position(message)
    return None if stamped is None else str(stamped.position)


def _reason(text: str) -> str:
    data = text.encode()
    if len(data) <= MAX_REASON:
        return text
    return data[: MAX_REASON - 3].decode(errors="ignore") + "..."


class ResumableGroupsMixin(AsyncWebsocketConsumer):
    """Joins history groups so that a reconnecting client misses nothing (see the module)."""

    resume_query_parameter: str = "since"
    """The query-string parameter the default :meth:`resume_from` reads."""
    resume_limit: int | None = None
    """At most this many messages replayed per resume or gap (None: what the history keeps)."""
    resume_report_type: str = "resume"
    """The ``type`` of the report frame."""

    def _resume_cursors(self) -> dict[str, StreamPosition]:
        """Per resumed group, the position of the last message handed to the handlers."""
        cursors: dict[str, StreamPosition] = self.__dict__.setdefault("_cursors", {})
        return cursors

    def _reporting(self) -> set[str]:
        """The groups whose client asked to resume, and so hears reports."""
        groups: set[str] = self.__dict__.setdefault("_reporting_groups", set())
        return groups

    # Hooks -----------------------------------------------------------------------------

    async def resume_from(self, group: str) -> ResumeFrom | None:
        """What the client asked for: None (no resume), or the position to resume after.

        Reads ``?since=`` (see the module); raises :class:`InvalidPosition` for input that is
        not a position. Override to read several groups' positions, or another place.
        """
        if self._resume_cursors():
            raise RuntimeError(
                f"{_consumer_name(self)} resumes a second group ({group!r}) with the default "
                f"resume_from(), which reads one position from ?{self.resume_query_parameter}=: "
                f"override resume_from() to give each group its own"
            )
        query = bytes(self.scope.get("query_string", b"")).decode("latin-1")
        values = parse_qs(query, keep_blank_values=True).get(self.resume_query_parameter)
        if not values:
            return None
        if len(values) > 1:
            raise InvalidPosition(f"{self.resume_query_parameter} is given {len(values)} times")
        if not values[0]:
            return ResumeFrom(None)
        return ResumeFrom(StreamPosition.parse(values[0]))

    def resume_report(self, group: str, result: HistoryResult) -> dict[str, Any]:
        """The report frame's content (override to rename or hide fields)."""
        return {
            "type": self.resume_report_type,
            "group": group,
            "position": str(result.position),
            "recovered": result.recovered,
            "replayed": len(result.messages),
        }

    async def send_resume_report(self, group: str, result: HistoryResult) -> None:
        """Send :meth:`resume_report` as a JSON text frame."""
        await self.send(text_data=json.dumps(self.resume_report(group, result)))

    # Resuming --------------------------------------------------------------------------

    async def resume_group(self, group: str) -> HistoryResult | None:
        """Join ``group``, replay what the client missed, report, and go live.

        Call it from ``connect()``, best before ``accept()``: the group is then joined (and the
        history read) before the handshake completes, as ``groups`` are, and the report and
        the replay go out right after the accept. Called after the accept, it does it all at
        once. Returns the history answer; None when the position was refused or the layer is
        down (the connection is then closed, see the module), or when the group keeps no
        history and was joined plainly. The group is left when the connection ends.
        """
        layer = self._group_layer()
        try:
            request = await self.resume_from(group)
        except InvalidPosition as exc:
            logger.info(
                "%s: refused %s: %s", _consumer_name(self), self.resume_query_parameter, exc
            )
            reason = _reason(f"invalid position: {exc}")
            await self._after_accept(lambda: self.close(code=CLOSE_POLICY, reason=reason))
            return None
        try:
            if not _keeps_history(layer, group):
                await self._join(layer, group)
                return None
            if request is None or request.since is None:
                # Position first, then join: a message in between is a gap, filled later.
                position = await layer.group_position(group)
                await self._join(layer, group)
                result = HistoryResult([], position, True)
            else:
                await self._join(layer, group)
                result = await layer.group_history(
                    group, since=request.since, limit=self.resume_limit
                )
        except LayerConnectionError as exc:
            logger.warning(
                "%s: cannot resume group %r, the channel layer is unavailable (%s); "
                "closing with %d",
                _consumer_name(self),
                group,
                exc,
                CLOSE_TRY_AGAIN,
            )
            await self._after_accept(
                lambda: self.close(code=CLOSE_TRY_AGAIN, reason="channel layer unavailable")
            )
            return None
        self._resume_cursors()[group] = result.position
        if request is not None:
            self._reporting().add(group)

        async def replay() -> None:
            if request is not None:
                await self.send_resume_report(group, result)
            for message in result.messages:
                await super(ResumableGroupsMixin, self).dispatch(message)

        await self._after_accept(replay)
        return result

    async def _after_accept(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` now if the connection is accepted, else right after ``accept()``."""
        if self.__dict__.get("_accepted"):
            await action()
        else:
            self.__dict__.setdefault("_after_accept_actions", []).append(action)

    async def accept(self, subprotocol: str | None = None, headers: Headers | None = None) -> None:
        """Accept, then send what :meth:`resume_group` prepared before the accept."""
        await super().accept(subprotocol, headers)
        self.__dict__["_accepted"] = True
        actions: list[Callable[[], Awaitable[None]]] = self.__dict__.pop(
            "_after_accept_actions", []
        )
        for action in actions:
            await action()

    async def _join(self, layer: BaseChannelLayer, group: str) -> None:
        await layer.group_add(group, self.channel_name)
        self._joined().append(group)

    # Live messages ---------------------------------------------------------------------

    async def dispatch(self, message: Message) -> None:
        """Hand ``message`` on, unless it is a resumed group's copy already delivered; a gap
        before it is filled from history first."""
        cursors = self.__dict__.get("_cursors")
        if cursors and message.get(POSITION_KEY) is not None:
            try:
                stamped = message_position(message)
            except InvalidPosition:
                stamped = None  # not the layer's stamp: not ours to judge
            if (
                stamped is not None
                and stamped.group in cursors
                and not await self._in_order(stamped.group, stamped.position, cursors)
            ):
                return
        await super().dispatch(message)

    async def _in_order(
        self, group: str, position: StreamPosition, cursors: dict[str, StreamPosition]
    ) -> bool:
        """Whether the live message at ``position`` is to be handled (cursor moved past it)."""
        cursor = cursors[group]
        if position.epoch == cursor.epoch:
            if position.offset <= cursor.offset:
                return False  # already handled: from the replay, or a duplicate
            if position.offset == cursor.offset + 1:
                cursors[group] = position
                return True
        await self._fill_gap(group, cursor, position, cursors)
        cursor = cursors[group]
        if cursor.epoch == position.epoch and position.offset <= cursor.offset:
            return False  # the history answer held it, and it was handled in order
        cursors[group] = position
        return True

    async def _fill_gap(
        self,
        group: str,
        cursor: StreamPosition,
        seen: StreamPosition,
        cursors: dict[str, StreamPosition],
    ) -> None:
        """Hand on the messages between ``cursor`` and ``seen`` (and any after) from history."""
        layer = self._group_layer()
        try:
            result = await layer.group_history(group, since=cursor, limit=self.resume_limit)
        except (LayerConnectionError, HistoryNotEnabled) as exc:
            logger.warning(
                "%s: group %r skipped from %s to %s and the history cannot fill it (%s)",
                _consumer_name(self),
                group,
                cursor,
                seen,
                exc,
            )
            if group in self._reporting():
                await self.send_resume_report(group, HistoryResult([], seen, False))
            return
        if not result.recovered and group in self._reporting():
            await self.send_resume_report(group, result)
        for message in result.messages:
            stamped = message_position(message)
            if stamped is None:  # pragma: no cover - the layer stamps every history copy
                continue
            cursors[group] = stamped.position
            await super().dispatch(message)
        if not result.messages:
            cursors[group] = result.position


def _keeps_history(layer: BaseChannelLayer, group: str) -> bool:
    """True when ``layer`` keeps history for ``group`` (False for layers without history)."""
    policy = getattr(layer, "history_policy", None)
    return policy is not None and policy(group) is not None
