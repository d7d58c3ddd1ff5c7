"""Every HTTP request runs under a Budget (storage/budget.py) that stops its work when it
takes too long, when its client disconnects, or when the server shuts down.

`RequestBudget` is an ASGI middleware, so that every route, present and future, is covered
without a line of its own:
- the budget's deadline is Limits.search_seconds for reads, searches, history and
  operations, Limits.write_seconds for writes and Bundles;
- the request's messages are read through a pump that also listens for `http.disconnect`
  while the endpoint works in the threadpool: a client that goes away stops the budget at
  once, and the running SQLite statement is interrupted (the progress handler sees it
  within milliseconds);
- the endpoint runs in a task of its own: when uvicorn shuts down (SIGTERM) it lets
  requests finish for `timeout_graceful_shutdown` seconds (Limits.shutdown_grace_seconds,
  set by `diatabase serve`), then cancels them. Starlette's threadpool defers that
  cancellation until the thread returns, so the middleware, which receives it, stops the
  budget; the query is interrupted, a write rolls back, and the server exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.api.http import fhir_response
from fhir_server.limits import Limits
from fhir_server.model.outcome import Issue, error, outcome
from fhir_server.storage import budget
from fhir_server.storage.budget import Budget, BudgetExceeded

log = logging.getLogger("diatabase")

READ_METHODS = ("GET", "HEAD", "OPTIONS")
# After cancelling a stopped request, how long to wait for its thread to notice.
STOP_WAIT_SECONDS = 5.0


def request_budget(scope: Scope, limits: Limits) -> Budget:
    """search_seconds for reads, searches and operations; write_seconds for writes."""
    path = scope.get("path", "")
    last = path.rstrip("/").rsplit("/", 1)[-1]
    reading = scope.get("method") in READ_METHODS or last == "_search" or last.startswith("$")
    if reading:
        return Budget(limits.search_seconds, "search_seconds")
    return Budget(limits.write_seconds, "write_seconds")


class RequestBudget:
    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        spent = request_budget(scope, self.limits)
        pump = _DisconnectPump(receive, spent, self.limits.receive_seconds)
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            try:
                async with asyncio.timeout(self.limits.send_seconds):
                    await send(message)  # waits while the client's socket is full
            except TimeoutError:
                spent.stop(budget.SLOW_CLIENT)
                raise SlowReader(self.limits.send_seconds) from None

        with budget.scope(spent):  # the endpoint's task (and its threads) inherit it
            work = asyncio.ensure_future(self.app(scope, pump.receive, watched_send))
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                # uvicorn's graceful shutdown is over: stop the work, let it unwind
                spent.stop(budget.SHUTDOWN)
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(work, STOP_WAIT_SECONDS)
                raise
            except SlowReader as exc:
                log.warning("closed a connection: %s", exc)  # uvicorn closes it
            except Exception as exc:
                # BudgetExceeded, or whatever a stopped budget made fail (an interrupted
                # statement outside the storage methods that translate it)
                if started or not (isinstance(exc, BudgetExceeded) or spent.exhausted()):
                    raise
                stopped = exc if isinstance(exc, BudgetExceeded) else BudgetExceeded(spent)
                body, status, headers = budget_outcome(stopped)
                await fhir_response(body, status, headers)(scope, pump.receive, send)
            finally:
                pump.close()


class SlowReader(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the client took no part of its answer for {seconds:g} s")


class _DisconnectPump:
    """Reads the request's messages one ahead of the endpoint, so that `http.disconnect`
    is seen while the endpoint is busy; holds at most one message (no body buffering).
    A body whose next part takes longer than `receive_seconds` ends as a disconnect."""

    def __init__(self, receive: Receive, spent: Budget, receive_seconds: float) -> None:
        self._receive = receive
        self._budget = spent
        self._receive_seconds = receive_seconds
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)
        self._disconnected = False
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        body_done = False
        while True:
            try:
                # while the body comes in, each part within receive_seconds; then only
                # the disconnect is awaited, for as long as the endpoint works
                async with asyncio.timeout(None if body_done else self._receive_seconds):
                    message = await self._receive()
            except TimeoutError:
                self._budget.stop(budget.SLOW_CLIENT)
                message = {"type": "http.disconnect"}
            if message["type"] == "http.request" and not message.get("more_body"):
                body_done = True
            if message["type"] == "http.disconnect":
                self._disconnected = True
                self._budget.stop(budget.DISCONNECTED)
                await self._queue.put(message)
                return
            await self._queue.put(message)

    async def receive(self) -> Message:
        if self._disconnected and self._queue.empty():
            return {"type": "http.disconnect"}
        return await self._queue.get()

    def close(self) -> None:
        self._task.cancel()


def budget_outcome(exc: BudgetExceeded) -> tuple[dict[str, Any], int, dict[str, str]]:
    """(OperationOutcome, status, headers) for work stopped by its budget.

    Past the deadline: 400 `too-costly`. FHIR's http page gives 400 for a search that
    "could not be processed"; 422 is for content that breaks profiles or business rules,
    and the request here was valid, only too costly. Shutting down: 503 with Retry-After,
    so that the client sends it again. Client gone: no one reads it (499 in the log)."""
    if exc.reason == budget.SHUTDOWN:
        body = outcome([Issue("error", "transient", exc.message)])
        return body, 503, {"Retry-After": "5"}
    if exc.reason == budget.DISCONNECTED:
        return outcome([Issue("error", "incomplete", exc.message)]), 499, {}
    if exc.reason == budget.SLOW_CLIENT:
        return outcome([Issue("error", "timeout", exc.message)]), 408, {"Connection": "close"}
    return outcome([Issue("error", "too-costly", exc.message)]), 400, {}


def uvicorn_limits(limits: Limits) -> dict[str, Any]:
    """uvicorn's own bounds, from Limits: on SIGTERM, requests get
    `shutdown_grace_seconds` to finish, then are cancelled (and their budgets stopped)."""
    return {"timeout_graceful_shutdown": limits.shutdown_grace_seconds}


def check_bundle_size(bundle: Any, limits: Limits) -> None:
    """413 for a transaction or batch Bundle of more entries than Limits.max_bundle_entries
    (imports from files, which may be bigger, do not come through HTTP)."""
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if isinstance(entries, list) and len(entries) > limits.max_bundle_entries:
        raise error(
            413,
            "too-costly",
            f"The Bundle has {len(entries)} entries; this server takes at most "
            f"{limits.max_bundle_entries} (limit max_bundle_entries)",
            "Bundle.entry",
        )
