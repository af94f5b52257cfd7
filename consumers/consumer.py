"""Channels' ``channels.consumer``: the base consumers, defined in :mod:`roomcast.consumers.base`
(read its docstring for the behaviour)."""

from .base import AsyncConsumer, SyncConsumer, get_handler_name

__all__ = ["AsyncConsumer", "SyncConsumer", "get_handler_name"]
