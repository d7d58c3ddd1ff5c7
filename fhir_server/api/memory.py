"""The server's memory given back after a burst.

A burst of big answers (50 pages of 1,000 resources at once) raises the process's memory
by hundreds of MB. Python frees the objects, but glibc keeps the freed pages: in one heap
("arena") per thread that needed one (up to 8 per core), and it returns to the system only
the top of the main heap. So the resident size stayed at its peak for good.

Two glibc settings, through ctypes (nothing to install; other C libraries are left alone):
- at start, `mallopt(M_ARENA_MAX, 2)`: the threadpool's 40 threads share two arenas
  instead of making up to 16 (the same as MALLOC_ARENA_MAX=2, without asking operators to
  set it); measured, no loss of throughput on 2 cores;
- `malloc_trim(0)` once the server has been idle (no request in flight, none started) for
  QUIET_SECONDS, on a thread, after a full garbage collection (cycles such as exceptions'
  tracebacks hold answers' chunks): it hands every free page of every arena back. It used
  to run when the last request ended, unless one had run in the second before: a burst
  whose last requests ended within that second was never trimmed. The quiet wait also
  keeps the trim (tens of ms on a big heap) out of busy periods.

What stays after a burst is mostly the threadpool's: each of its threads (up to 40) keeps
its SQLite reader connection and that connection's page cache until the pool retires the
thread (idle for 10 s, on the next request), then the memory goes back.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

M_ARENA_MAX = -8
ARENAS = 2
QUIET_SECONDS = 1.0


def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def limit_arenas() -> None:
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


def trim() -> None:
    if _LIBC is not None:
        gc.collect()
        _LIBC.malloc_trim(0)


class MemoryTrim:
    """ASGI middleware: counts requests in flight; once none has run for QUIET_SECONDS,
    trims."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._in_flight = 0
        self._started = 0  # requests started so far: a trim waits for no new one
        limit_arenas()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _LIBC is None:
            await self.app(scope, receive, send)
            return
        self._in_flight += 1
        self._started += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                loop = asyncio.get_running_loop()
                loop.call_later(QUIET_SECONDS, self._trim_if_quiet, loop, self._started)

    def _trim_if_quiet(self, loop: asyncio.AbstractEventLoop, started: int) -> None:
        if self._in_flight == 0 and self._started == started:
            loop.run_in_executor(None, trim)
