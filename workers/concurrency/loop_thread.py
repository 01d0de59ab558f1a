"""A loop on a daemon thread of its own, stopped by an event, that leaves SIGTERM and SIGINT
to the main thread: the shape of the intake's mover (workers.engine.intake) and the spool's
drainer (workers.engine.spool_drain). A signal the kernel gave such a thread would wait there,
unhandled, while the main thread sleeps in its blocking read of the queue."""

import threading
from collections.abc import Callable

from workers.concurrency.side import block_stop_signals


def start_loop(run: Callable[[threading.Event], None], *,
               name: str) -> tuple[threading.Thread, threading.Event]:
    """`run(stop)` in a daemon thread named `name` that blocks SIGTERM and SIGINT; set the
    event to stop it."""
    stop = threading.Event()

    def body() -> None:
        block_stop_signals()
        run(stop)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    return thread, stop
