"""Uncaught exceptions as JSON lines, redacted like every other (workers.telemetry.logs).

Python's own hooks print an uncaught exception's traceback to stderr as it is: one of the main
thread (a start-up that fails outside the commands' checks) or of any other thread (the
intake mover, a side loop, a library's). Its message quotes what raised it, a Redis URL with
its password, an answer repeating a token, and went out verbatim, past the formatter that
redacts every log line. These hooks log it instead, as an error line of the root logger's
handler: the last error on the line (`error`), the whole chain as RQ keeps a job's
(`traceback`, concurrency.failure_text: no page answered, redacted). The exit code is the
interpreter's as before (1 for the main thread's; none for another thread's).
"""

import logging
import sys
import threading
from types import TracebackType

from workers.concurrency.failure_text import failure_text

log = logging.getLogger("ci_autoscaler.uncaught")


def _log(kind: type[BaseException], error: BaseException | None,
         trace: TracebackType | None, thread: str) -> None:
    from workers.telemetry import logs

    exc_info = (kind, error, trace)
    try:
        log.error("uncaught exception", exc_info=exc_info,
                  extra={"thread_name": thread,
                         "traceback": failure_text(exc_info, logs.secrets())})
    except Exception:  # logging itself failed: the type only, never the raw text
        print(f"uncaught exception in {thread}: {kind.__name__}", file=sys.stderr)


def _main_hook(kind: type[BaseException], error: BaseException | None,
               trace: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        # Ctrl-C: Python's own text for it, but redacted: pressed during the handling of a
        # failure (a retry's wait in its `except`), its chain tells that failure's message
        # too. The exit by SIGINT is the interpreter's, whatever the hook prints.
        from workers.telemetry import logs

        print(failure_text((kind, error, trace), logs.secrets()), end="", file=sys.stderr)
        return
    _log(kind, error, trace, threading.current_thread().name)


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    # threading ignores SystemExit before calling the hook (threading.excepthook's docs)
    name = args.thread.name if args.thread is not None else threading.current_thread().name
    _log(args.exc_type, args.exc_value, args.exc_traceback, name)


def install() -> None:
    """Route uncaught exceptions of every thread through the logs (logs.configure calls it)."""
    sys.excepthook = _main_hook
    threading.excepthook = _thread_hook
