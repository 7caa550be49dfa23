"""A bounded memo for pure functions on the forward-auth hot path (pure, no I/O).

Proxies repeat themselves: the same peer address, the same X-Forwarded-For, the
same few URLs and hosts arrive thousands of times a second. Parsing and matching
them is pure, so the result for a given input can be remembered. Keys may come
from clients, so every memo is bounded: beyond `max_entries` the oldest
insertion is forgotten (dicts keep insertion order, so this is O(1)) and a
flood of distinct values only costs the memo its hit rate, never memory.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    """A dict of at most `max_entries` items that forgets its oldest insertion first."""

    __slots__ = ("_data", "_max_entries", "get")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._data: dict[K, V] = {}
        self._max_entries = max_entries
        # The bound method itself: a lookup is one C call, the whole point of a memo.
        self.get = self._data.get

    def put(self, key: K, value: V) -> None:
        """Remember value for key, forgetting the oldest entry when full."""
        data = self._data
        if len(data) >= self._max_entries and key not in data:
            del data[next(iter(data))]
        data[key] = value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
