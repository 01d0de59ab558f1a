"""A loop thread (workers.concurrency.loop_thread), as the intake's mover and the spool's
drainer start theirs: a daemon of the given name, SIGTERM and SIGINT blocked in it (so the
kernel gives them to the main thread), ended by its event."""

import signal
import threading

from workers.concurrency.loop_thread import start_loop


def test_a_loop_thread_leaves_sigterm_and_sigint_to_the_main_thread_and_ends_on_its_event():
    seen: dict = {}
    running = threading.Event()

    def run(stop: threading.Event) -> None:
        seen["blocked"] = signal.pthread_sigmask(signal.SIG_BLOCK, set())
        seen["name"] = threading.current_thread().name
        running.set()
        stop.wait()

    thread, stop = start_loop(run, name="test-loop")
    assert running.wait(5)
    assert {signal.SIGTERM, signal.SIGINT} <= seen["blocked"]
    assert seen["name"] == "test-loop" and thread.daemon
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # not here
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
