"""A Django Channels project in one file, with ``roomcast.layers.redis.RedisChannelLayer``.

Run by ``test_channels_compat.py`` in interpreters of its own, so Django is never configured in
the pytest process:

    python channels_app.py serve REDIS_URL PREFIX
        Channels' own consumers (two async ones and a sync one) talk through the layer, driven by
        Channels' ``WebsocketCommunicator``; halfway through, a second OS process is started
        (``send`` below) that reaches them from outside and is reached by them.
    python channels_app.py send REDIS_URL PREFIX CHANNEL
        The other process: ``async_to_sync(layer.group_send)`` as a Django view would, a direct
        ``send`` to ``CHANNEL`` (a consumer of the serve process), then a group member of its own.

Both print one JSON object per line, each with a ``"check"`` key; the test asserts them. Every
wait is bounded, so a failure ends the run quickly with an ``{"check": "error"}`` line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import traceback
from typing import Any

TIMEOUT = 5.0  # one message, connect or disconnect
NOTHING = 0.3  # how long "nothing more arrives" is watched
RUN_TIMEOUT = 60.0  # the whole scenario of one process
GROUP = "room"
SCRIPT = os.path.abspath(__file__)


def emit(check: str, **data: Any) -> None:
    print(json.dumps({"check": check, **data}), flush=True)


def setup_django(url: str, prefix: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "roomcast.layers.redis.RedisChannelLayer",
                "CONFIG": {"hosts": [url], "prefix": prefix},
            }
        },
    )
    django.setup()


def layer_info(layer: Any) -> dict[str, Any]:
    from channels.layers import get_channel_layer
    from roomcast.layers.redis import RedisChannelLayer

    return {
        "class": f"{type(layer).__module__}.{type(layer).__qualname__}",
        "is_roomcast": isinstance(layer, RedisChannelLayer),
        "same_instance": get_channel_layer() is layer,
        "prefix": getattr(layer, "prefix", None),
        "extensions": list(getattr(layer, "extensions", [])),
        "process_id": getattr(layer, "process_id", None),
        "pid": os.getpid(),
    }


async def close_layer(layer: Any) -> None:
    await asyncio.wait_for(layer.close(), 10)


def websocket_communicator() -> Any:
    """Channels' ``WebsocketCommunicator``, with or without daphne installed.

    ``channels.testing/__init__`` also imports the live-server test case, which needs daphne;
    the communicator does not. Without daphne, load the submodule without the package init.
    """
    try:
        from channels.testing import WebsocketCommunicator
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("daphne"):
            raise
        import types

        import channels

        package = types.ModuleType("channels.testing")
        package.__path__ = [os.path.join(os.path.dirname(channels.__file__), "testing")]
        sys.modules["channels.testing"] = package
        from channels.testing.websocket import WebsocketCommunicator
    return WebsocketCommunicator


# The consumers --------------------------------------------------------------------------------


def make_consumers() -> tuple[type, type]:
    """Defined after ``django.setup()``: Channels' consumers import Django on the way."""
    from asgiref.sync import async_to_sync
    from channels.generic.websocket import AsyncWebsocketConsumer, JsonWebsocketConsumer

    class ChatConsumer(AsyncWebsocketConsumer):
        """Joins the room on connect; what a client says goes to everyone in the room."""

        async def connect(self) -> None:
            await self.channel_layer.group_add(GROUP, self.channel_name)
            await self.accept()

        async def disconnect(self, code: int) -> None:
            await self.channel_layer.group_discard(GROUP, self.channel_name)

        async def receive(self, text_data: str | None = None, bytes_data: Any = None) -> None:
            if text_data == "/name":  # lets the test learn this consumer's channel name
                await self.send(text_data=self.channel_name)
                return
            await self.channel_layer.group_send(GROUP, {"type": "chat.message", "text": text_data})

        async def chat_message(self, event: dict[str, Any]) -> None:
            await self.send(text_data=event["text"])

        async def chat_direct(self, event: dict[str, Any]) -> None:
            await self.send(text_data="direct: " + event["text"])

    class SyncChatConsumer(JsonWebsocketConsumer):
        """The same room from a sync consumer: every layer call goes through async_to_sync."""

        def connect(self) -> None:
            async_to_sync(self.channel_layer.group_add)(GROUP, self.channel_name)
            self.accept()

        def disconnect(self, code: int) -> None:
            async_to_sync(self.channel_layer.group_discard)(GROUP, self.channel_name)

        def receive_json(self, content: Any, **kwargs: Any) -> None:
            async_to_sync(self.channel_layer.group_send)(
                GROUP, {"type": "chat.message", "text": content["text"]}
            )

        def chat_message(self, event: dict[str, Any]) -> None:
            self.send_json({"text": event["text"], "via": "sync"})

    return ChatConsumer, SyncChatConsumer


# serve: this process's consumers ---------------------------------------------------------------


class Room:
    """Two async clients and a sync one, connected through Channels' test communicator."""

    def __init__(self) -> None:
        communicator = websocket_communicator()
        chat, sync_chat = make_consumers()
        self.a = communicator(chat.as_asgi(), "/ws/chat/")
        self.b = communicator(chat.as_asgi(), "/ws/chat/")
        self.sync = communicator(sync_chat.as_asgi(), "/ws/sync-chat/")
        self.clients = {"a": self.a, "b": self.b, "sync": self.sync}

    async def connect(self) -> dict[str, bool]:
        results = {}
        for name, client in self.clients.items():
            connected, _ = await client.connect(timeout=TIMEOUT)
            results[name] = connected
        return results

    async def say(self, sender: str, text: str) -> None:
        if sender == "sync":
            await self.sync.send_json_to({"text": text})
        else:
            await self.clients[sender].send_to(text_data=text)

    async def next_message(self, name: str) -> Any:
        if name == "sync":
            return await self.sync.receive_json_from(timeout=TIMEOUT)
        return await self.clients[name].receive_from(timeout=TIMEOUT)

    async def collect(self) -> dict[str, Any]:
        """The next message of every client (each must get one within TIMEOUT)."""
        return {name: await self.next_message(name) for name in self.clients}

    async def quiet(self) -> dict[str, bool]:
        """For each client: True if nothing more arrives within NOTHING."""
        return {
            name: await client.receive_nothing(timeout=NOTHING)
            for name, client in self.clients.items()
        }


class Sender:
    """The second OS process (``send`` mode), read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, prefix: str, channel: str) -> Sender:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            "send",
            url,
            prefix,
            channel,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc)

    async def until(self, check: str) -> dict[str, Any]:
        """Forward the sender's lines until the one with ``check``; fail fast on its error."""
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT * 3)
            if not line:
                raise RuntimeError(f"sender exited before {check!r}: {await self.stderr()}")
            record = json.loads(line)
            record["check"] = "sender." + record["check"]
            print(json.dumps(record), flush=True)
            if record["check"] == "sender.error":
                raise RuntimeError("sender failed: " + record["traceback"])
            if record["check"] == "sender." + check:
                return record

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await asyncio.wait_for(self.proc.stderr.read(), TIMEOUT)).decode()

    async def finish(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT * 2)
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def serve(url: str, prefix: str) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    emit("layer", **layer_info(layer))

    room = Room()
    emit("connected", **await room.connect())
    emit("members_after_connect", count=len(await layer.group_members(GROUP)))

    # Everyone hears each client, the sync consumer's group_send included.
    heard = {}
    for sender in ("a", "b", "sync"):
        text = f"hello from {sender}"
        await room.say(sender, text)
        heard[text] = await room.collect()
    emit("same_process", heard=heard, quiet=await room.quiet())

    # Another OS process: group_send and a direct send into this process...
    await room.a.send_to(text_data="/name")
    a_channel = await room.a.receive_from(timeout=TIMEOUT)
    sender = await Sender.start(url, prefix, a_channel)
    try:
        sent = await sender.until("sent")
        # a gets the group message and the direct one; from another process a send and a
        # group_send travel different paths and may arrive in either order.
        to_a = sorted([await room.a.receive_from(timeout=TIMEOUT) for _ in range(2)])
        emit(
            "from_other_process",
            sender_pid=sent["pid"],
            sender_process_id=sent["process_id"],
            a=to_a,
            b=await room.next_message("b"),
            sync=await room.next_message("sync"),
            quiet=await room.quiet(),
        )

        # ... and this process's consumers reach a group member in that process.
        await sender.until("ready")
        await room.say("b", "hello, other process")
        here = await room.collect()
        received = await sender.until("received")
        emit("to_other_process", here=here, there=received["message"])
        emit("sender_exit", code=await sender.finish(), stderr=await sender.stderr())
    finally:
        sender.kill()

    # Disconnecting runs the consumers' group_discard.
    await room.a.disconnect(timeout=TIMEOUT)
    after_a = await layer.group_members(GROUP)
    await room.b.send_to(text_data="after a left")
    emit(
        "after_disconnect",
        a_still_member=a_channel in after_a,
        members=len(after_a),
        b=await room.b.receive_from(timeout=TIMEOUT),
        sync=await room.sync.receive_json_from(timeout=TIMEOUT),
    )
    await room.b.disconnect(timeout=TIMEOUT)
    await room.sync.disconnect(timeout=TIMEOUT)
    emit("members_after_all_left", count=len(await layer.group_members(GROUP)))
    await close_layer(layer)


# send: the other process -------------------------------------------------------------------------


def send(channel: str) -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    # What a Django view or management command does: sync code, async_to_sync around the layer.
    async_to_sync(layer.group_send)(
        GROUP, {"type": "chat.message", "text": f"hello from process {os.getpid()}"}
    )
    async_to_sync(layer.send)(channel, {"type": "chat.direct", "text": "just for a"})
    emit("sent", **layer_info(layer))

    async def listen() -> None:
        mine = await layer.new_channel()
        await layer.group_add(GROUP, mine)
        emit("ready", channel=mine)
        message = await asyncio.wait_for(layer.receive(mine), TIMEOUT)
        await layer.group_discard(GROUP, mine)
        emit("received", message=message)
        await close_layer(layer)

    asyncio.run(asyncio.wait_for(listen(), RUN_TIMEOUT))


def main(argv: list[str]) -> int:
    mode, url, prefix, *rest = argv
    try:
        setup_django(url, prefix)
        if mode == "serve":
            asyncio.run(asyncio.wait_for(serve(url, prefix), RUN_TIMEOUT))
        elif mode == "send":
            send(*rest)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    except Exception:
        emit("error", traceback=traceback.format_exc())
        return 1
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
