"""Figures computed from one published snapshot, kept while it is current.

A published snapshot version never changes (`cachemon.store.snapshots`), so
whatever is computed from it for the same arguments is the same until the
next publish: the API keeps its window figures here (`metrics.window`'s
figures, a window's daily cost rate) and computes them once per snapshot
version and window. Only what depends on the snapshot and the key alone may
be kept: nothing that depends on the request's instant (the health, the
forecast, the data's age are computed per request).

A memo belongs to one snapshot `version`; its owner starts a new one when
the version changes (and must be sure the connection it reads from is that
version: `SnapshotMemo.version` is only a name).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

from cachemon.errors import InputError

T = TypeVar("T")

MEMO_SIZE = 256  # entries per snapshot: about ten per period and endpoint, and the minutes


class SnapshotMemo:
    """Values computed from the snapshot `version`, by key (at most `size`,
    the least recently used dropped first). Thread-safe; two threads missing
    the same key both compute it (the same value), none waits."""

    def __init__(self, version: str, size: int = MEMO_SIZE):
        if size < 1:
            raise InputError(f"memo size must be 1 or more, got {size}")
        self.version = version
        self.size = size
        self._values: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value kept for `key`, or `compute()` kept and returned."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                self.hits += 1
                return self._values[key]  # type: ignore[return-value]
            self.misses += 1
        value = compute()
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._values)


def through(memo: SnapshotMemo | None, key: Hashable, compute: Callable[[], T]) -> T:
    """`memo.get(key, compute)`, or `compute()` without a memo."""
    return compute() if memo is None else memo.get(key, compute)
