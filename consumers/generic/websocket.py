"""Channels' ``channels.generic.websocket``: the WebSocket consumers, defined in
:mod:`roomcast.consumers.websocket` (read its docstring for the behaviour)."""

from ..websocket import (
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    WebsocketConsumer,
)

__all__ = [
    "AsyncJsonWebsocketConsumer",
    "AsyncWebsocketConsumer",
    "JsonWebsocketConsumer",
    "WebsocketConsumer",
]
