"""The worker's stop of its RQ scheduler process: SIGTERM, sent again until the process ends.

RQ's (rq/worker/base.py stop_scheduler) sends one SIGTERM and waits for the process without a
limit. A SIGTERM that reaches a process forked a moment before, before it has run (a worker
stopped as it starts, on a loaded machine), is lost: the kernel runs the C handler, which
marks the signal and writes Python's wakeup fd, at the child's first return to user space,
and CPython's after-fork code then clears that mark (Modules/signalmodule.c
_PySignal_AfterFork: a signal that came in just before fork() is not to be handled in both
processes, bpo-9535), so the Python handler never runs. The scheduler ran on and the worker
waited for it for ever (seen under load: killed after 30 s, exit -9; a pod's worker past its
grace period, SIGKILLed, left registered with the scheduler lock held). A SIGTERM once the
process runs Python reaches the worker's handlers it inherited, which ask its scheduler to
stop (PoolWorker._in_scheduler_process), or the scheduler's own: each one more is harmless.
"""

import os
import signal
from multiprocessing.connection import wait
from typing import Any

# A stopping worker sends its scheduler's process SIGTERM again this often while it runs
# (RQ's scheduler looks at its stop flag once a second, its interval).
RESEND_SECONDS = 1.0


def stop(process: Any) -> None:
    """SIGTERM to the scheduler's `process` (a multiprocessing process of this one), again
    each RESEND_SECONDS until it ends; then it is joined (reaped), as RQ does."""
    if process is None or not process.pid:
        return
    # Its exit code looked at first (a waitpid that reaps it if it ended): one already reaped
    # (by the heartbeat's is_alive, PoolWorker._keep_scheduler) has a pid the kernel may have
    # given another process. Its sentinel ready with no exit code: it ended and something
    # else reaped it (waitpid: ECHILD, multiprocessing's exit code stays None for ever): the
    # SIGTERM went to whatever holds that pid now, again and again, the join never waiting.
    while process.exitcode is None:
        if wait([process.sentinel], 0):
            process.join(0)  # it ended: reaped here unless already reaped elsewhere
            return
        try:
            os.kill(process.pid, signal.SIGTERM)
        except OSError:  # RQ's: gone already; the look above reaps it
            pass
        process.join(RESEND_SECONDS)
