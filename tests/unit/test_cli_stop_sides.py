"""The reconcile process's GitLab side threads (catch-up, commit statuses) at its stop: they
share one wait, so that two stuck in slow GitLab calls do not keep the process twice as long,
past its pod's grace period (SIGKILL, exit 137)."""

import threading
import time

from service.cli import _stop_sides

WAIT_SECONDS = 0.5


def stuck(release: threading.Event) -> tuple[threading.Thread, threading.Event]:
    """A side thread in a GitLab call that outlasts any wait: it ends only on `release`."""
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    return thread, threading.Event()


def test_two_stuck_side_threads_are_waited_for_together_not_one_after_the_other():
    release = threading.Event()
    sides = [stuck(release), stuck(release)]
    try:
        began = time.monotonic()
        _stop_sides(sides, seconds=WAIT_SECONDS)
        waited = time.monotonic() - began
    finally:
        release.set()
    assert all(thread_stop.is_set() for _thread, thread_stop in sides)
    assert WAIT_SECONDS <= waited < 1.5 * WAIT_SECONDS  # one after the other: twice as long


def test_side_threads_that_stop_when_asked_are_not_waited_for_longer():
    sides = []
    for _ in range(2):
        thread_stop = threading.Event()
        thread = threading.Thread(target=thread_stop.wait, daemon=True)
        thread.start()
        sides.append((thread, thread_stop))
    began = time.monotonic()
    _stop_sides(sides, seconds=30)
    assert time.monotonic() - began < 5
    assert not any(thread.is_alive() for thread, _stop in sides)
