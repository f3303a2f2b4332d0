"""`ObjectRef`: the name of an object in the server's store."""

from __future__ import annotations

import re
from typing import Tuple, Type

__all__ = ["ObjectRef"]

_HEX = re.compile(r"[0-9a-f]{32}")


class ObjectRef:
    """A reference to an object in a Prism server's store: 128 random bits, written as
    32 lowercase hex digits (`.hex`). Like Ray's `ObjectRef` it is only a name: pass it to
    `get`, `wait`, `delete`, as a task argument, or as an inference input. Hashable and
    comparable by its hex, so it can key a dict or sit in a set."""

    __slots__ = ("_hex",)

    def __init__(self, hex: str) -> None:
        if not isinstance(hex, str) or not _HEX.fullmatch(hex.lower()):
            raise ValueError(f"an object ref is 32 hex digits, got {hex!r}")
        self._hex = hex.lower()

    @property
    def hex(self) -> str:
        """The ref as the wire writes it: 32 lowercase hex digits."""
        return self._hex

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(("prism.ObjectRef", self._hex))

    def __repr__(self) -> str:
        return f"ObjectRef({self._hex})"

    def __str__(self) -> str:
        return self._hex

    def __reduce__(self) -> Tuple[Type["ObjectRef"], Tuple[str]]:
        return (ObjectRef, (self._hex,))
