"""One voice for a database outage: said once when it starts, once when it ends.

The main loop, the lease keeper and every slot meet the same outage; whoever notices first
says so, and whoever first gets through again says that it is back.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("batchjob.worker")


class Outage:
    def __init__(self) -> None:
        self._since: float | None = None
        self._lock = threading.Lock()

    def failed(self, error: Exception) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                log.warning("action=database_unavailable error=%s: waiting for it", error)

    def succeeded(self) -> None:
        if self._since is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self._since is not None:
                log.info("action=database_back down_for=%.1fs", time.monotonic() - self._since)
                self._since = None
