"""Channels' ``channels.apps``: ``ChannelsConfig``, the Django app config of this package.

Port ``INSTALLED_APPS``: put ``"roomcast"`` where Channels had ``"daphne"`` (before
``django.contrib.staticfiles``) and drop ``"channels"``: the ``roomcast`` app brings
``runserver`` and ``runworker``. ``"roomcast.consumers"`` may be listed too (it is this config,
label ``roomcast_consumers``) but adds nothing: like Channels' app it has no models and no
settings of its own. Importing this module imports Django.
"""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["ChannelsConfig"]


class ChannelsConfig(AppConfig):  # type: ignore[misc]  # Django has no type hints here
    """The app config of ``roomcast.consumers`` (Channels' ``ChannelsConfig``)."""

    name = "roomcast.consumers"
    label = "roomcast_consumers"
    verbose_name = "roomcast consumers"
