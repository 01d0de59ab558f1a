"""workers.concurrency.scheduler_stop with real forked processes: a scheduler process that
ended and was reaped is signalled no more (its pid may be another process's by then)."""

import multiprocessing
import os
import signal
import threading

from workers.concurrency import scheduler_stop

FORK = multiprocessing.get_context("fork")


def _exit_at_once() -> None:
    os._exit(0)


def _wait_until_terminated(stop) -> None:
    # SIGTERM's default, as a scheduler process has (RQ's handler ends it): the child would
    # run the handler its pytest-xdist worker had at the fork, and one a test left there that
    # only notes a stop (an in-process worker's) never ended it: stop() resent for ever.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stop.wait()


def _stop_within(process, seconds: float) -> bool:
    done = threading.Event()

    def run() -> None:
        scheduler_stop.stop(process)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def test_a_scheduler_process_reaped_by_someone_else_is_not_signalled_for_ever():
    process = FORK.Process(target=_exit_at_once)
    process.start()
    os.waitpid(process.pid, 0)  # reaped by another waitpid: multiprocessing sees ECHILD
    assert process.exitcode is None  # what it reports for ever after
    # before the fix: SIGTERM to its (free, or reused) pid in a tight loop, never returning
    assert _stop_within(process, 5.0)


def test_a_scheduler_process_already_reaped_gets_no_sigterm(monkeypatch):
    process = FORK.Process(target=_exit_at_once)
    process.start()
    process.join()
    assert process.exitcode == 0
    sent = []
    # the stdlib's kill, recorded: a pid reaped may be another process's by now
    monkeypatch.setattr(scheduler_stop.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    scheduler_stop.stop(process)
    assert sent == []


def test_a_running_scheduler_process_is_stopped_and_reaped():
    stop = FORK.Event()
    process = FORK.Process(target=_wait_until_terminated, args=(stop,))
    process.start()
    assert _stop_within(process, 10.0)
    # Reaped (an exit code), so ended by a SIGTERM: its event is never set. Not `== -SIGTERM`:
    # one that lands before the child resets the handler runs the inherited one (its exit 0).
    assert process.exitcode is not None and not process.is_alive()
