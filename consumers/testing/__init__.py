"""Test communicators: drive an ASGI application without a server, as ``channels.testing``.

Built on :class:`asgiref.testing.ApplicationCommunicator`, with Channels' signatures and return
values::

    communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/lobby/")
    connected, subprotocol = await communicator.connect()
    await communicator.send_json_to({"message": "hi"})
    assert await communicator.receive_json_from() == {"message": "hi"}
    await communicator.disconnect()

    response = await HttpCommunicator(app, "GET", "/poll/").get_response()
    assert response["status"] == 200 and response["body"] == b"..."

An exception raised by the application surfaces in the test at the next call that waits on it
(``receive_output``, ``connect``, ``disconnect``...). The scopes are those a real server builds
(``asgi``, ``scheme``, ``raw_path``, ``root_path`` included); header names given as str are
encoded (latin-1) and lowercased, as a server would. ``HttpCommunicator`` sends the whole body
in one ``http.request`` message unless the test already sent the request with ``send_input``
(a body in parts, or a long-poll the test answers before collecting it); ``receive_output``
reads a streamed response part by part.

**Django's database.** The application runs inside
:func:`roomcast.consumers.db.keep_connections`, so ``database_sync_to_async`` in a consumer
does not close the connection that holds a Django ``TestCase``'s transaction (Channels 4.2+
behaves the same): objects the test created are visible to the consumer, and the test can go on
querying afterwards.

``ChannelsLiveServerTestCase`` (:mod:`roomcast.consumers.testing.live`) serves the project's
ASGI application on a real gateway for browser tests; it needs Django and is imported only when
asked for. Nothing here needs ``channels`` or ``daphne``.
"""

# Channels' API takes ``timeout`` arguments; they bound each wait, as asyncio.timeout would.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlparse

from asgiref.compatibility import guarantee_single_callable
from asgiref.testing import ApplicationCommunicator as _AsgirefCommunicator

from ..base import ASGIApp, Message, Receive, Scope, Send
from ..db import keep_connections

if TYPE_CHECKING:
    from .live import ChannelsLiveServerTestCase

__all__ = [
    "ApplicationCommunicator",
    "ChannelsLiveServerTestCase",
    "HttpCommunicator",
    "WebsocketCommunicator",
]


def __getattr__(name: str) -> Any:
    if name == "ChannelsLiveServerTestCase":  # needs Django: imported on first use only
        from .live import ChannelsLiveServerTestCase

        return ChannelsLiveServerTestCase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


HeaderPairs = Iterable[tuple[bytes | str, bytes | str]]

_FIRST = asyncio.FIRST_COMPLETED


def _header_list(headers: HeaderPairs | None) -> list[tuple[bytes, bytes]]:
    result = []
    for name, value in headers or []:
        raw_name = name.encode("latin-1") if isinstance(name, str) else name
        raw_value = value.encode("latin-1") if isinstance(value, str) else value
        result.append((raw_name.lower(), raw_value))
    return result


def _keeping_connections(application: ASGIApp) -> ASGIApp:
    """``application``, run inside ``keep_connections()`` (see the module docstring)."""
    app = guarantee_single_callable(application)  # type: ignore[no-untyped-call]

    async def run(scope: Scope, receive: Receive, send: Send) -> Any:
        with keep_connections():
            return await app(scope, receive, send)

    return run


def _path_scope(path: str) -> dict[str, Any]:
    if not isinstance(path, str):
        raise TypeError(f"Expected str, got {type(path)}")
    parsed = urlparse(path)
    return {
        "path": unquote(parsed.path),
        "raw_path": parsed.path.encode("utf-8"),
        "root_path": "",
        "query_string": parsed.query.encode("utf-8"),
    }


class ApplicationCommunicator(_AsgirefCommunicator):
    """Runs ``application`` for ``scope``: ``send_input``, ``receive_output(timeout)``,
    ``receive_nothing(timeout, interval)``, ``wait(timeout)``, ``stop()``."""

    scope: Scope
    _future: Any = None  # so that __del__ works on an instance whose __init__ raised

    def __init__(self, application: ASGIApp, scope: Scope) -> None:
        super().__init__(_keeping_connections(application), scope)  # type: ignore[no-untyped-call]

    async def send_input(self, message: Message) -> None:
        """Give the application one message."""
        await super().send_input(message)  # type: ignore[no-untyped-call]

    async def receive_output(self, timeout: float = 1) -> Message:
        """The application's next message; ``TimeoutError`` (app cancelled) if none in time.

        Unlike asgiref's, an application that fails while this waits raises its error at once
        rather than after ``timeout``.
        """
        if not self.future.done():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            getter = asyncio.ensure_future(self.output_queue.get())
            try:
                await asyncio.wait({getter, self.future}, timeout=timeout, return_when=_FIRST)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return cast(Message, getter.result())
            # The application ended first, or nothing came in time: asgiref's handling (raise
            # the application's error; or wait out the rest, cancel it, raise TimeoutError).
            timeout = max(0.0, deadline - loop.time()) if self.future.done() else 0.0
        result = await super().receive_output(timeout)  # type: ignore[no-untyped-call]
        return cast(Message, result)

    async def receive_nothing(self, timeout: float = 0.1, interval: float = 0.01) -> bool:
        """``True`` if the application sends nothing within ``timeout`` seconds."""
        result = await super().receive_nothing(timeout, interval)  # type: ignore[no-untyped-call]
        return bool(result)

    async def wait(self, timeout: float = 1) -> None:
        """Wait for the application to return; re-raise its error. After ``timeout`` it is
        cancelled (quietly, as in asgiref)."""
        await super().wait(timeout)  # type: ignore[no-untyped-call]


class WebsocketCommunicator(ApplicationCommunicator):
    """A WebSocket client for tests: builds the scope from ``path``, ``headers``, ``subprotocols``.

    ``spec_version`` is put in ``scope["asgi"]["spec_version"]`` (where the ASGI spec has it) and
    in ``scope["spec_version"]`` (where Channels puts it).
    """

    def __init__(
        self,
        application: ASGIApp,
        path: str,
        headers: HeaderPairs | None = None,
        subprotocols: Iterable[str] | None = None,
        spec_version: str | None = None,
    ) -> None:
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            **_path_scope(path),
            "headers": _header_list(headers),
            "subprotocols": list(subprotocols or []),
        }
        if spec_version:
            scope["asgi"]["spec_version"] = spec_version
            scope["spec_version"] = spec_version
        super().__init__(application, scope)
        self.response_headers: list[tuple[bytes, bytes]] | None = None

    async def connect(self, timeout: float = 1) -> tuple[bool, Any]:
        """Open the connection: ``(True, subprotocol)`` if accepted, ``(False, code)`` if not.

        A refusal through the ``websocket.http.response`` extension gives ``(False, status)``.
        """
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return (False, response.get("code", 1000))
        if response["type"] == "websocket.http.response.start":
            return (False, response.get("status"))
        assert response["type"] == "websocket.accept", (
            f"Expected 'websocket.accept' or 'websocket.close', got {response['type']!r}"
        )
        self.response_headers = list(response.get("headers", []))
        return (True, response.get("subprotocol", None))

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Send one frame (exactly one of ``text_data``/``bytes_data``) to the application."""
        assert bool(text_data) != bool(bytes_data), (
            "You must supply exactly one of text_data or bytes_data"
        )
        if text_data:
            assert isinstance(text_data, str), "The text_data argument must be a str"
            await self.send_input({"type": "websocket.receive", "text": text_data})
        else:
            assert isinstance(bytes_data, bytes), "The bytes_data argument must be bytes"
            await self.send_input({"type": "websocket.receive", "bytes": bytes_data})

    async def send_json_to(self, data: Any) -> None:
        """Send ``data`` as JSON in a text frame."""
        await self.send_to(text_data=json.dumps(data))

    async def receive_from(self, timeout: float = 1) -> str | bytes:
        """The next frame the application sends (str or bytes); fails on anything else."""
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.send", (
            f"Expected type 'websocket.send', but was '{response['type']}'"
        )
        assert ("text" in response) != ("bytes" in response), (
            "The response needs exactly one of 'text' or 'bytes'"
        )
        if "text" in response:
            text = response["text"]
            assert isinstance(text, str), f"Text frame payload is not str, it is {type(text)}"
            return text
        data = response["bytes"]
        assert isinstance(data, bytes), f"Binary frame payload is not bytes, it is {type(data)}"
        return data

    async def receive_json_from(self, timeout: float = 1) -> Any:
        """The next frame, which must be text, decoded as JSON."""
        payload = await self.receive_from(timeout)
        assert isinstance(payload, str), f"JSON data is not a text frame, it is {type(payload)}"
        return json.loads(payload)

    async def disconnect(self, code: int = 1000, timeout: float = 1) -> None:
        """Close from the client side and wait for the application to finish."""
        await self.send_input({"type": "websocket.disconnect", "code": code})
        await self.wait(timeout)


class HttpCommunicator(ApplicationCommunicator):
    """One HTTP request for tests; ``get_response()`` gives ``{"status", "headers", "body"}``."""

    def __init__(
        self,
        application: ASGIApp,
        method: str,
        path: str,
        body: bytes = b"",
        headers: HeaderPairs | None = None,
    ) -> None:
        assert isinstance(body, bytes), "body must be bytes"
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "http",
            "method": method.upper(),
            **_path_scope(path),
            "headers": _header_list(headers),
        }
        self.body = body
        self.sent_request = False
        super().__init__(application, scope)

    async def send_input(self, message: Message) -> None:
        """Give the application one message; an ``http.request`` counts as the request sent."""
        if message.get("type") == "http.request":
            self.sent_request = True
        await super().send_input(message)

    async def get_response(self, timeout: float = 1) -> dict[str, Any]:
        """Send the request (unless already sent) and collect the whole response.

        ``timeout`` bounds the wait for each response message, so a streamed response may take
        longer in all. Returns the ``http.response.start`` fields without ``type`` (``status``,
        ``headers``, ...) and ``body``, all parts joined.
        """
        if not self.sent_request:
            await self.send_input({"type": "http.request", "body": self.body})
        start = await self.receive_output(timeout)
        assert start["type"] == "http.response.start", (
            f"Expected 'http.response.start', got {start['type']!r}"
        )
        response = dict(start)
        response["body"] = b""
        while True:
            chunk = await self.receive_output(timeout)
            assert chunk["type"] == "http.response.body", (
                f"Expected 'http.response.body', got {chunk['type']!r}"
            )
            assert isinstance(chunk.get("body", b""), bytes)
            response["body"] += chunk.get("body", b"")
            if not chunk.get("more_body", False):
                break
        del response["type"]
        response.setdefault("headers", [])
        return response
