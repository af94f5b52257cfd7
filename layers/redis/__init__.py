"""The Redis channel layer: one copy per process, fan-out inside the process (see ``layer``)."""

from .layer import RedisChannelLayer

__all__ = ["RedisChannelLayer"]
