"""Channels' ``channels.generic.http``: ``AsyncHttpConsumer``, defined in
:mod:`roomcast.consumers.http` (read its docstring for the behaviour)."""

from ..http import AsyncHttpConsumer

__all__ = ["AsyncHttpConsumer"]
