"""Channels' ``channels.generic`` path: :mod:`.websocket` and :mod:`.http` re-export the
generic consumers, which live in :mod:`roomcast.consumers.websocket` and
:mod:`roomcast.consumers.http`."""
