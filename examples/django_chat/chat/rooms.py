"""Which room names are valid: the same rule for the page (404) and the WebSocket (403).

A room is a channel-layer group ``chat_<name>``, and group names may hold only ASCII letters,
digits, ``-``, ``_`` and ``.``, shorter than 100 characters.
"""

from __future__ import annotations

import re

ROOM_NAME = re.compile(r"[A-Za-z0-9._-]{1,50}")


def is_room_name(name: str) -> bool:
    return ROOM_NAME.fullmatch(name) is not None


def group_name(room_name: str) -> str:
    return f"chat_{room_name}"
