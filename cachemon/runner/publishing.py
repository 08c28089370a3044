"""The runner's publish of the reader snapshot, with back-off.

The runner publishes once after each tick that ran jobs. A failed publish
(a full disk: a whole copy of the store each time) is retried with
back-off, RETRY_MIN_S doubling to RETRY_MAX_S, while the jobs go on; until
one succeeds readers see the previous snapshot and no heartbeat goes out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from cachemon.errors import CachemonError
from cachemon.runner.runlog import one_line
from cachemon.store import snapshots

log = logging.getLogger("cachemon.runner")

RETRY_MIN_S = 2.0
RETRY_MAX_S = 300.0


class Publisher:
    """Publishes the store at `path` when something changed (`changed`),
    calling `on_published` after each success. `monotonic` and `publish`
    are parameters with real defaults (as prometheus_client's `handler=`)."""

    def __init__(
        self,
        path: str | os.PathLike,
        on_published: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
        publish: Callable[[str | os.PathLike], object] = snapshots.publish_snapshot,
    ):
        self.path, self.on_published = path, on_published
        self.monotonic, self._publish = monotonic, publish
        self.unpublished = True  # the first call publishes what the store holds
        self.retry_at = 0.0
        self.retry_delay = RETRY_MIN_S

    def changed(self) -> None:
        """The store holds something readers have not seen yet."""
        self.unpublished = True

    def publish(self) -> bool:
        """Publish if something changed and no back-off is running; True
        when readers are up to date."""
        if not self.unpublished:
            return True
        if self.monotonic() < self.retry_at:
            return False
        try:
            self._publish(self.path)
        except Exception as exc:  # a CachemonError is one line; anything else keeps its traceback
            log.error(
                "publish: %s; readers see the previous snapshot and no heartbeat is sent; "
                "trying again in %g s",
                one_line(exc),
                self.retry_delay,
                exc_info=not isinstance(exc, CachemonError),
            )
            self.retry_at = self.monotonic() + self.retry_delay
            self.retry_delay = min(2 * self.retry_delay, RETRY_MAX_S)
            return False
        self.unpublished, self.retry_at, self.retry_delay = False, 0.0, RETRY_MIN_S
        self.on_published()
        return True
