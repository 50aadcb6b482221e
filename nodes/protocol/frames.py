"""Length-prefixed msgpack frames of typed messages: the framing the heterogeneous edge's and
DSD's protocols share (``nodes.protocol.hetnet``, ``nodes.protocol.dsd``).

Layer: pure (nodes.protocol): bytes in, messages out.

A frame is a 4-byte big-endian length and a msgpack array ``[type, fields...]``; the type
picks the message class from the protocol's table, and the fields fill its dataclass fields
in order (arrays become tuples, nested at most ``depth`` levels, holding no maps). A frame over
``max_frame`` bytes, bytes that are not a message, or a message that breaks its class's rules
raise RemoteProtocolError.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import fields
from typing import Generic, Protocol, TypeVar

import msgpack

from emu.errors import RemoteProtocolError
from nodes.protocol.events import ErrorCode

__all__ = ["TypedFrames"]

HEADER = struct.Struct(">I")


class _Wire(Protocol):
    def to_wire(self) -> list[object]: ...


E = TypeVar("E", bound=_Wire)


class TypedFrames(Generic[E]):
    """Framing, both ways, of one stream of one protocol's messages (``types``: each class by
    its code): ``pack`` a message, ``feed`` bytes read and take the messages that are
    complete."""

    def __init__(
        self, types: Mapping[int, type[E]], *, depth: int, max_frame: int = 1 << 20
    ) -> None:
        self.types = types
        self.depth = depth
        self.max_frame = max_frame
        self._fields = {code: tuple(f.name for f in fields(cls)) for code, cls in types.items()}  # type: ignore[arg-type]
        self._buf = bytearray()

    def pack(self, event: E) -> bytes:
        body: bytes = msgpack.packb(event.to_wire(), use_bin_type=True)
        return HEADER.pack(len(body)) + body

    def feed(self, data: bytes | bytearray) -> list[E]:
        self._buf += data
        out: list[E] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self.max_frame:
                raise RemoteProtocolError(
                    f"frame of {size} bytes over the limit of {self.max_frame}",
                    code=ErrorCode.TOO_LARGE,
                )
            if len(self._buf) < HEADER.size + size:
                break
            body = bytes(self._buf[HEADER.size : HEADER.size + size])
            del self._buf[: HEADER.size + size]
            out.append(self.decode(body))
        return out

    @property
    def partial(self) -> bool:
        """Whether bytes of an unfinished frame are held (a stream that ends here is cut)."""
        return bool(self._buf)

    def decode(self, body: bytes) -> E:
        """One frame's body as its message."""
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
            if type(obj) is not list or not obj or type(obj[0]) is not int:
                raise ValueError("a message must be an array [type, fields...]")
            cls = self.types.get(obj[0])
            if cls is None:
                raise RemoteProtocolError(f"unknown message type {obj[0]}", code=ErrorCode.UNKNOWN)
            names = self._fields[obj[0]]
            if len(obj) - 1 > len(names):
                raise ValueError(f"{cls.__name__} has at most {len(names)} fields")
            return cls(**{n: self._tuples(v, 0) for n, v in zip(names, obj[1:], strict=False)})
        except RemoteProtocolError:
            raise
        except Exception as exc:
            raise RemoteProtocolError(
                f"malformed message: {exc}", code=ErrorCode.MALFORMED
            ) from exc

    def _tuples(self, x: object, level: int) -> object:
        if isinstance(x, list):
            if level >= self.depth:
                raise ValueError(f"a field nests deeper than {self.depth} levels")
            return tuple(self._tuples(y, level + 1) for y in x)
        if level and isinstance(x, dict):
            raise ValueError("an array of a field may not hold a map")
        return x
