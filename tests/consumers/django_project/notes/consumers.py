"""Consumers that read ``Note`` through ``database_sync_to_async``, as a project's would."""

from typing import Any

from roomcast.consumers.db import database_sync_to_async
from roomcast.consumers.generic.http import AsyncHttpConsumer
from roomcast.consumers.generic.websocket import AsyncJsonWebsocketConsumer

from .models import Note


@database_sync_to_async
def note_texts() -> list[str]:
    return list(Note.objects.order_by("id").values_list("text", flat=True))


@database_sync_to_async
def add_note(text: str) -> int:
    return Note.objects.create(text=text).pk


class NotesConsumer(AsyncJsonWebsocketConsumer):
    """Sends the notes on connect; ``{"add": text}`` adds one and sends the notes again."""

    async def connect(self) -> None:
        await self.accept()
        await self.send_json({"notes": await note_texts()})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await add_note(content["add"])
        await self.send_json({"notes": await note_texts()})


class NotesHttpConsumer(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        texts = await note_texts()
        await self.send_response(
            200, "\n".join(texts).encode(), headers=[(b"content-type", b"text/plain")]
        )
