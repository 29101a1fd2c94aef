"""One registry per kind of choice a run makes (client strategies, point strategies, datasets):
names in registration order, each registered once, and an unknown name refused with the valid
ones listed (the error message is each kind's own)."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``kind``: what an entry is, for the registered-twice error; ``unknown``: the error for an
    unknown name, a template with ``{name!r}`` and ``{valid}``; ``sort``: list the names sorted
    instead of in registration order."""

    def __init__(self, kind: str, unknown: str, *, sort: bool = False):
        self.kind, self.unknown, self.sort = kind, unknown, sort
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests and examples that register a throwaway entry)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries)) if self.sort else tuple(self._entries)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(self.unknown.format(name=name, valid=", ".join(self.names()))) from None
