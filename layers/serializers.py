"""Message encoding: msgpack, a size limit, and optional Fernet encryption on the wire.

Every backend encodes a message exactly once, when it is sent, and decodes it once per
delivery (a group message of immutable values only is decoded once per process and copied per
member, see :mod:`roomcast.layers.local`). That gives each receiver its own copy (no receiver can
mutate
another's message),
makes the in-memory layer refuse exactly what the Redis layer refuses, and lets a group_send
pay for encoding once however many members the group has.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import msgpack

from .exceptions import (
    InvalidMessage,
    LayerConfigError,
    MessageEncodeError,
    MessageTooLarge,
    UndecodableMessage,
)

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


class _Cipher(Protocol):
    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, token: bytes) -> bytes: ...


def validate_message(message: Any) -> None:
    """Raise :class:`InvalidMessage` unless ``message`` is a dict with str keys and a str type."""
    if not isinstance(message, dict):
        raise InvalidMessage(f"message must be a dict, not {type(message).__name__}")
    for key in message:
        if not isinstance(key, str):
            raise InvalidMessage(f"message keys must be str, got {key!r}")
    if not isinstance(message.get("type"), str):
        raise InvalidMessage("message must have a 'type' key holding a str")


def _fernet_for(keys: Iterable[str | bytes]) -> _Cipher:
    """A MultiFernet that encrypts with the first key and decrypts with any (key rotation).

    Keys are passphrases of any length: each is stretched to a Fernet key with SHA-256, so the
    same passphrases yield the same Fernet keys in every process.
    """
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LayerConfigError(
            "symmetric_encryption_keys needs the 'cryptography' package: "
            "pip install 'roomcast[cryptography]'"
        ) from exc
    fernets = []
    for key in keys:
        raw = key.encode() if isinstance(key, str) else key
        fernets.append(Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
    if not fernets:
        raise LayerConfigError("symmetric_encryption_keys: give at least one key")
    return MultiFernet(fernets)


class MessageCodec:
    """Turns message dicts into bytes and back, enforcing the layer's limits."""

    __slots__ = ("_cipher", "max_message_size")

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
    ) -> None:
        self.max_message_size = max_message_size
        self._cipher = _fernet_for(symmetric_encryption_keys) if symmetric_encryption_keys else None

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    def encode(self, message: Mapping[str, Any]) -> bytes:
        """Validate and msgpack-encode; raises InvalidMessage, MessageEncodeError or
        MessageTooLarge (the limit applies to the plaintext, whatever the encryption)."""
        validate_message(message)
        try:
            data: bytes = msgpack.packb(message, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MessageEncodeError(
                f"message of type {message['type']!r} cannot be encoded: {exc}"
            ) from exc
        if len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"message of type {message['type']!r} is {len(data)} bytes encoded, "
                f"over max_message_size={self.max_message_size}"
            )
        return data

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode bytes made by :meth:`encode`; raises :class:`UndecodableMessage` otherwise."""
        try:
            message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise UndecodableMessage(f"not a msgpack message ({exc!r})") from exc
        if not isinstance(message, dict):
            raise UndecodableMessage(f"not a message dict: {type(message).__name__}")
        return message

    def seal(self, data: bytes) -> bytes:
        """Encrypt encoded bytes for the wire (a no-op without keys)."""
        return data if self._cipher is None else self._cipher.encrypt(data)

    def unseal(self, data: bytes) -> bytes:
        """Decrypt wire bytes with any configured key; raises ``InvalidToken`` on a bad one.

        Done once per process copy, before the copy is fanned out to local members.
        """
        return data if self._cipher is None else self._cipher.decrypt(data)
