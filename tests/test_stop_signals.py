"""SIGINT and SIGTERM stop a follower between passes (fhir_server/stop_signals.py).

Before, `deid views --follow` turned SIGINT into a KeyboardInterrupt raised wherever it
was, inside its database work included; under load the full suite saw it still running
60 s after SIGINT (tests/test_deid_views.py's follow test)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from fhir_server.stop_signals import StopSignals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_work_is_recorded_not_raised(signum: signal.Signals) -> None:
    with StopSignals() as stop:
        os.kill(os.getpid(), signum)  # arrives "during a pass": nothing is raised here
        total = sum(range(10_000))
        assert stop.requested == signum and total
        assert stop.wait(120) is True


def test_the_wait_between_passes_ends_at_once() -> None:
    with StopSignals() as stop:
        assert stop.wait(0) is False
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
        started = time.monotonic()
        sender.start()
        assert stop.wait(120) is True  # woken by the signal, not by the 120 s
        sender.join()
        assert time.monotonic() - started < 60


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals():
        assert signal.getsignal(signal.SIGINT) is not before[0]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert signal.set_wakeup_fd(-1) == -1  # and no wakeup pipe is left behind
