"""Django TestCases run by ``run`` in a subprocess (see tests/consumers/test_django_db.py)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from asgiref.testing import ApplicationCommunicator as AsgirefCommunicator
from django.db import connection
from django.test import TestCase
from roomcast.consumers.db import database_sync_to_async
from roomcast.consumers.testing import (
    ChannelsLiveServerTestCase,
    HttpCommunicator,
    WebsocketCommunicator,
)
from websockets.sync.client import connect

from .notes.consumers import NotesConsumer, NotesHttpConsumer
from .notes.models import Note


class CommunicatorDatabaseTests(TestCase):
    """A consumer's ``database_sync_to_async`` inside a TestCase: the connection holding the
    test's transaction stays open, and the consumer sees what the test created."""

    def test_the_database_is_a_file(self) -> None:
        # The bug only shows on a database materialised on disk.
        assert not connection.is_in_memory_db()

    async def test_websocket_twice_in_a_row(self) -> None:
        await Note.objects.acreate(text="made by the test")
        for attempt in (1, 2):
            communicator = WebsocketCommunicator(NotesConsumer.as_asgi(), "/ws/notes/")
            connected, _ = await communicator.connect()
            assert connected
            assert await communicator.receive_json_from() == {"notes": ["made by the test"]}
            await communicator.send_json_to({"add": f"added by the consumer {attempt}"})
            reply = await communicator.receive_json_from()
            assert reply["notes"][-1] == f"added by the consumer {attempt}"
            await communicator.disconnect()
            # The consumer's row is in the test's transaction, visible here.
            await Note.objects.filter(text=f"added by the consumer {attempt}").adelete()
        # The test's connection is still usable after the communicators.
        assert await Note.objects.acount() == 1

    async def test_http_consumer(self) -> None:
        await Note.objects.acreate(text="one")
        await Note.objects.acreate(text="two")
        for _ in range(2):
            response = await HttpCommunicator(
                NotesHttpConsumer.as_asgi(), "GET", "/notes/"
            ).get_response()
            assert response["status"] == 200
            assert response["body"] == b"one\ntwo"
        assert await Note.objects.acount() == 2

    def test_rows_of_other_tests_are_rolled_back(self) -> None:
        assert Note.objects.count() == 0


CLOSED = "Cannot operate on a closed database"


class AsgirefCommunicatorTests(TestCase):
    """The control: asgiref's own communicator keeps nothing open, and the same consumer breaks
    the TestCase's connection. This is the bug our communicators avoid. (One test per class:
    the broken connection is the class's.)"""

    async def test_plain_asgiref_communicator_closes_the_test_connection(self) -> None:
        await Note.objects.acreate(text="made by the test")
        communicator = AsgirefCommunicator(
            NotesConsumer.as_asgi(),
            {"type": "websocket", "path": "/ws/notes/", "headers": [], "subprotocols": []},
        )
        await communicator.send_input({"type": "websocket.connect"})
        accepted = await communicator.receive_output(5)
        assert accepted["type"] == "websocket.accept"
        with self.assertRaisesMessage(Exception, CLOSED):
            await communicator.receive_output(5)  # the consumer's error, raised here


class DirectCallTests(TestCase):
    async def test_direct_call_outside_a_communicator_still_closes(self) -> None:
        """Only the communicators keep connections: ORM code a test awaits directly tidies up
        as in production (Channels behaves the same)."""

        @database_sync_to_async
        def count() -> int:
            return Note.objects.count()

        with self.assertRaisesMessage(Exception, CLOSED):
            await count()


class LiveServerTests(ChannelsLiveServerTestCase):
    """A real gateway serving the project's ASGI application against the test database."""

    def test_urls(self) -> None:
        port = self._server_thread.port
        assert self.live_server_url == f"http://localhost:{port}"
        assert self.live_server_ws_url == f"ws://localhost:{port}"
        assert port != 0

    def test_websocket_client_reads_a_model_created_in_the_test(self) -> None:
        Note.objects.create(text="created in the test")
        with connect(
            f"{self.live_server_ws_url}/ws/notes/",
            origin=self.live_server_url,
            open_timeout=30,
        ) as ws:
            assert json.loads(ws.recv(30)) == {"notes": ["created in the test"]}
            ws.send(json.dumps({"add": "added over the wire"}))
            reply = json.loads(ws.recv(30))
        assert reply == {"notes": ["created in the test", "added over the wire"]}
        assert Note.objects.filter(text="added over the wire").exists()

    def test_http_through_django_and_a_consumer(self) -> None:
        Note.objects.create(text="a")
        assert self._get("/count/") == b"1"  # a Django view
        assert self._get("/notes/") == b"a"  # an AsyncHttpConsumer

    def test_static_files_are_served(self) -> None:
        body = self._get("/static/notes/hello.txt")
        assert body == b"static file served by the live server\n"

    def test_origin_check_uses_the_live_host(self) -> None:
        from websockets.exceptions import InvalidStatus

        with self.assertRaises(InvalidStatus) as info:  # noqa: PT027 - a Django TestCase
            connect(
                f"{self.live_server_ws_url}/ws/notes/",
                origin="http://evil.example",
                open_timeout=30,
            )
        assert info.exception.response.status_code == 403

    def test_tables_are_emptied_between_tests(self) -> None:
        # TransactionTestCase: the rows other tests committed are gone.
        assert self._get("/count/") == b"0"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.live_server_url}{path}", timeout=30) as response:
            return response.read()


class LiveServerInMemoryTests(ChannelsLiveServerTestCase):
    """Run with ``ROOMCAST_TEST_DB_MEMORY=1``: setUpClass must refuse."""

    def test_never_runs(self) -> None:
        raise AssertionError("setUpClass should have refused an in-memory database")


class LiveServerShutdownTests(ChannelsLiveServerTestCase):
    """What the class's cleanup does to a client still connected: the gateway closes it 1001
    (going away) and the thread ends; the cleanup's own stop() is then a no-op."""

    def test_open_websocket_is_closed_1001_at_the_end(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = connect(
            f"{self.live_server_ws_url}/ws/notes/",
            origin=self.live_server_url,
            open_timeout=30,
        )
        assert json.loads(ws.recv(30)) == {"notes": []}
        thread = type(self)._server_thread
        thread.stop()
        assert not thread.is_alive()
        with self.assertRaises(ConnectionClosed) as info:  # noqa: PT027 - a Django TestCase
            ws.recv(30)
        assert info.exception.rcvd.code == 1001
        ws.close()


class LiveServerPortInUseTests(ChannelsLiveServerTestCase):
    """A gateway that cannot start fails setUpClass with the gateway's own error."""

    start_error: BaseException | None = None

    @classmethod
    def setUpClass(cls) -> None:
        import socket

        cls.taken = socket.socket()
        cls.taken.bind(("127.0.0.1", 0))
        cls.taken.listen()
        cls.addClassCleanup(cls.taken.close)
        cls.port = cls.taken.getsockname()[1]
        try:
            super().setUpClass()
        except Exception as exc:
            cls.start_error = exc

    def test_start_error_names_the_address(self) -> None:
        from roomcast.gateway.config import ConfigError

        assert isinstance(self.start_error, ConfigError)
        assert f"cannot listen on localhost:{self.port}" in str(self.start_error)
