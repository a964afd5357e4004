"""Deadlines on one thread: each runs once, in order, unless cancelled."""

import threading
import time

import pytest

from placement_actors.backends.timers import Deadlines


def test_deadlines_run_once_in_time_order_and_cancelled_ones_never() -> None:
    deadlines = Deadlines()
    ran: list[str] = []
    done = threading.Event()

    def last() -> None:
        ran.append("late")
        done.set()

    deadlines.call_later(0.2, last)
    deadlines.call_later(0.05, lambda: ran.append("early"))
    deadlines.call_later(0.1, lambda: ran.append("cancelled")).cancel()
    assert done.wait(5)
    assert ran == ["early", "late"]
    deadlines.stop()


def test_a_stopped_clock_drops_what_is_pending_and_takes_nothing_new() -> None:
    deadlines = Deadlines()
    ran: list[str] = []
    deadlines.call_later(0.05, lambda: ran.append("pending"))
    deadlines.stop()
    late = deadlines.call_later(0.0, lambda: ran.append("after stop"))
    assert late.cancelled
    time.sleep(0.2)
    assert ran == []


def test_a_thousand_deadlines_share_one_thread() -> None:
    before = threading.active_count()
    deadlines = Deadlines()
    handles = [deadlines.call_later(60, lambda: None) for _ in range(1000)]
    assert threading.active_count() <= before + 1
    for handle in handles:
        handle.cancel()
    deadlines.stop()


def test_a_failing_callback_does_not_stop_later_deadlines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    deadlines = Deadlines()
    done = threading.Event()
    deadlines.call_later(0.01, lambda: 1 / 0)
    deadlines.call_later(0.05, done.set)
    assert done.wait(5)
    assert "a deadline callback failed" in caplog.text
    deadlines.stop()
