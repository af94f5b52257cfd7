"""Well-known clients against the gateway: httpx (async) and the standard library's http.client."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from roomcast.gateway.config import Receive, Scope, Send

from .conftest import Serve

pytestmark = pytest.mark.timeout(30)


async def inspect_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers JSON describing the request; ``/stream`` answers in chunks, ``/fail`` raises."""
    digest = hashlib.sha256()
    size = 0
    pieces = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        digest.update(message["body"])
        size += len(message["body"])
        pieces += 1
        if not message["more_body"]:
            break
    if scope["path"] == "/fail":
        raise RuntimeError("internal detail")
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(50):
            chunk = f"line {index}\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "http_version": scope["http_version"],
        "client_port": scope["client"][1],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
        "size": size,
        "sha256": digest.hexdigest(),
    }
    body = json.dumps(answer).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201 if scope["method"] == "POST" else 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-path", scope["raw_path"]),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def base_url(serve: Serve) -> str:
    host, port, _ = await serve(inspect_app, limit_request_body=4 * 1024 * 1024)
    return f"http://{host}:{port}"


async def test_httpx_get_with_query_and_headers(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get(
            "/caf%C3%A9/x", params={"q": "a b", "n": "1"}, headers={"X-Token": "abc"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["server"] == "roomcast"
    assert "date" in response.headers
    data = response.json()
    assert data["method"] == "GET"
    assert data["path"] == "/café/x"
    assert data["raw_path"] == "/caf%C3%A9/x"
    assert data["query_string"] == "q=a+b&n=1"
    assert data["http_version"] == "1.1"
    assert ["x-token", "abc"] in data["headers"]


async def test_httpx_post_json_and_form(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        posted = await client.post("/items", json={"name": "x" * 1000})
        form = await client.post("/form", data={"a": "1", "b": "two words"})
    assert posted.status_code == 201
    body = json.dumps({"name": "x" * 1000}, separators=(",", ":")).encode()
    assert posted.json()["size"] in (len(body), len(json.dumps({"name": "x" * 1000})))
    assert form.json()["sha256"] == hashlib.sha256(b"a=1&b=two+words").hexdigest()


async def test_httpx_streamed_upload_is_received_whole(base_url: str) -> None:
    """A chunked upload of 3 MiB, well past the 256 KiB flow-control mark."""
    piece = bytes(range(256)) * 256  # 64 KiB
    count = 48

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.put("/upload", content=body())
    data = response.json()
    assert data["size"] == len(piece) * count
    assert data["sha256"] == hashlib.sha256(piece * count).hexdigest()
    assert ["transfer-encoding", "chunked"] in data["headers"]


async def test_httpx_streamed_response(base_url: str) -> None:
    async with (
        httpx.AsyncClient(base_url=base_url) as client,
        client.stream("GET", "/stream") as response,
    ):
        assert response.headers["transfer-encoding"] == "chunked"
        text = "".join([chunk async for chunk in response.aiter_text()])
    assert text == "".join(f"line {index}\n" for index in range(50))


async def test_httpx_reuses_the_connection(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        ports = {(await client.get(f"/n/{index}")).json()["client_port"] for index in range(10)}
        head = await client.head("/head")
    assert len(ports) == 1  # keep-alive: ten requests, one connection
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0


async def test_httpx_many_concurrent_clients_get_their_own_answers(base_url: str) -> None:
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:
        responses = await asyncio.gather(*(client.get(f"/c/{index}") for index in range(60)))
    for index, response in enumerate(responses):
        assert response.json()["path"] == f"/c/{index}"
        assert response.headers["x-request-path"] == f"/c/{index}"


async def test_httpx_sees_a_500_for_an_app_error(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get("/fail")
        assert response.status_code == 500
        assert "internal detail" not in response.text
        assert (await client.get("/after")).status_code == 200  # a new connection works


async def test_httpx_upload_over_the_limit_gets_413(serve: Serve) -> None:
    host, port, _ = await serve(inspect_app, limit_request_body=64 * 1024)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        response = await client.post("/big", content=b"x" * (64 * 1024 + 1))
    assert response.status_code == 413


async def test_http_client_from_the_standard_library(base_url: str) -> None:
    def call() -> list[tuple[int, bytes, str | None]]:
        host, port = base_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        results = []
        try:
            for method, path, body in (
                ("GET", "/one?x=1", None),
                ("POST", "/two", b"payload"),
                ("GET", "/stream", None),
            ):
                connection.request(method, path, body=body)
                response = connection.getresponse()
                results.append(
                    (response.status, response.read(), response.getheader("transfer-encoding"))
                )
        finally:
            connection.close()
        return results

    (one, two, stream) = await asyncio.to_thread(call)
    assert one[0] == 200
    assert json.loads(one[1])["query_string"] == "x=1"
    assert two[0] == 201
    assert json.loads(two[1])["sha256"] == hashlib.sha256(b"payload").hexdigest()
    assert stream == (200, "".join(f"line {i}\n" for i in range(50)).encode(), "chunked")
