"""gunicorn settings for the web process; flat values plus its hooks: the start-up check, and the
two that multiprocess metrics need.

PROMETHEUS_MULTIPROC_DIR, an empty directory, makes counters add up across workers: the
chart gives one; without it (the Procfile, `docker run`) the master makes one once it listens, before any worker imports prometheus_client, which reads the variable as it
is imported (service.startup.ensure_metrics_dir). The master itself never imports it before.
"""

import os
import sys

from workers.adapters import listen

# CI_AUTOSCALER_BIND when given; else $PORT on every address, as Heroku, honcho and foreman
# expect of a Procfile's web process; else 8080. With CI_AUTOSCALER_ADMIN_BIND, a second
# listener for /metrics and /status (service.ports: the app tells the two apart by the port a
# request came in on; the same workers and threads serve both). A host of "*" is every address
# of the IP families the pod has (workers.adapters.listen): [::] where one socket takes IPv4
# and IPv6, 0.0.0.0 without IPv6; 0.0.0.0 alone left an IPv6-only pod's address unheard.
# A PORT or WEB_CONCURRENCY that is no number is left to on_starting's check, which refuses it
# naming the variable (workers.config.settings): read here as it was, gunicorn itself refused
# PORT=abc without naming it ("'abc' is not a valid port number."). WEB_CONCURRENCY=two is not
# refused here but by `ci-autoscaler web` before gunicorn starts: gunicorn's own config module
# does int() on it as it is imported, before this file is read (gunicorn/config.py, Workers'
# default), so gunicorn started by hand ends in its ValueError; the Procfile, the image and the
# chart run `ci-autoscaler web`.


def _number(name: str, default: int) -> int:
    """The variable's number as the settings take it (white space around its digits allowed:
    WEB_CONCURRENCY=" 1" ran 2 workers); anything else is on_starting's to refuse."""
    value = (os.environ.get(name) or "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


bind = [*listen.expand(os.environ.get("CI_AUTOSCALER_BIND")
                       or f"{listen.EVERY_ADDRESS}:{_number('PORT', 8080)}"),
        *listen.expand(os.environ.get("CI_AUTOSCALER_ADMIN_BIND") or "")]
# Measured with bench/ingest.py (bench/results/ingest.md), 2 cores shared with Redis and the
# load, with sync workers: 4 served webhooks no faster than 2 (-10%..+4% req/s in the same
# rounds) but with a lower p99 at half load (8-15 ms against 11-22 ms), for two more processes'
# memory; the default stays 2, raise WEB_CONCURRENCY where latency matters more than memory.
workers = _number("WEB_CONCURRENCY", 2)
# gthread with its slow clients kept off the threads (service/http_worker.py): with sync, two
# sockets that sent half a request line held both workers, and /healthz waited 31 s.
worker_class = "service.http_worker.Worker"
# Threads run the app; heads, the bodies the app reads (a webhook's, with its token) and closes
# are read in the main loop, so a slow client holds no thread (service/http_worker.py). 8
# keep /healthz answered while webhooks wait out a stalled Redis (up to 2 x 2 s each); 4 gave
# the same webhook rate in the bench's same rounds.
threads = 8
timeout = 30
# On SIGTERM gunicorn closes its listener and lets each worker finish the request in flight.
# A webhook's own worst case is a few seconds (two tries at Redis, 2 s each, then 503), and
# GitLab gives up after 10 s anyway: 15 s covers every request that can still be answered; the
# chart's grace period is its preStop wait (web.shutdownDelaySeconds) plus 25 s.
# tests/integration/test_web_shutdown.py holds a request in flight across SIGTERM.
graceful_timeout = 15
keepalive = 5
# No gunicornc control socket: nothing here uses it, its default path ($HOME/.gunicorn) is taken
# by whichever gunicorn of the user started last, and stopping its server delays the SIGTERM
# of the workers by up to 4 s. (Ignored by gunicorn versions before 25.1.)
control_socket_disable = True
# No access log: a Jenkins token may travel in the query string (?token=). One an operator
# turns on (GUNICORN_CMD_ARGS="--access-logfile -") shows no query nor token header
# (service.refused_requests.hide_queries, by the worker).
accesslog = None
errorlog = "-"
# gunicorn's lines keep its format, redacted as ours are, tracebacks too (service.gunicorn_logs)
logger_class = "service.gunicorn_logs.Logger"


def on_starting(server):
    """Refuse to start on a bad config file or a missing token, here in the master, before any
    worker: a worker that exits with the error (service/wsgi.py) is replaced by another, for
    ever (gunicorn's arbiter halts only on its exit codes 3 and 4), so the web would never stop.
    The file as checked is copied for the workers (service.startup.snapshot). Then wipe the
    metrics files of an earlier run (an emptyDir survives a container restart), unless this
    master is a USR2 re-exec."""
    from service import startup
    from workers.telemetry import logs
    from workers.core.errors import ConfigError

    # The service's JSON lines for what the checks log here (the INSECURE warning, a config
    # copy not made): before, Python's last-resort handler wrote them as bare text. gunicorn's
    # own lines keep its format (its loggers do not propagate to the root), redacted all the
    # same (service.gunicorn_logs).
    logs.configure()
    # A master that USR2 re-executed inherits the environment of the old one's last SIGHUP
    # (gunicorn's arbiter.reexec: cfg.env_orig, taken as reload() builds its new Config): after
    # a refused reload, it names the copy the old master's workers still load. Not ours to
    # replace and delete (snapshot), nor to delete on exit.
    os.environ.pop(startup.SNAPSHOT_ENV, None)
    try:
        startup.check()
        startup.make_given_metrics_dir()
        startup.snapshot()  # the workers load this copy (service.startup.snapshot)
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    startup.hold_spool_live()  # for the master's whole life (workers.adapters.spool_live)
    startup.warn_if_evicting()  # once per start, not on each reload
    # A master that USR2 re-executed (GUNICORN_PID, set by arbiter.reexec) shares the old
    # master's directory, whose workers serve and count on until it is stopped: their files
    # stay (the old master's child_exit marks them dead as they end).
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory) and "GUNICORN_PID" not in os.environ:
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


def when_ready(server):
    """The listeners bound, no worker forked yet: the metrics directory made now when none is
    given (service.startup.ensure_metrics_dir), inherited by every worker. Not in on_starting:
    a start that then cannot bind exits from gunicorn's start with no on_exit (sock.
    create_sockets: sys.exit), and left the directory under /tmp on every try."""
    from service import startup

    startup.ensure_metrics_dir()


def pre_exec(server):
    """USR2, in the new master's process before its exec: it shares the old master's metrics
    directory, also one made in when_ready (service.startup.pass_metrics_dir)."""
    from service import startup

    startup.pass_metrics_dir(server)


def on_reload(server):
    """SIGHUP: the config file checked anew and copied for the new workers; one that is refused
    is logged, field by field, and the workers go on with the copy they had."""
    from service import startup
    from workers.core.errors import ConfigError

    try:
        startup.check()
        startup.snapshot()
    except ConfigError as err:
        for problem in err.problems:
            startup.log.error("config refused on reload, the one checked before kept",
                              extra={"problem": problem})
    except Exception as err:  # raised here, it would end gunicorn's main loop: the whole web
        startup.log.error("config not reloaded, the one checked before kept",
                          extra={"error": type(err).__name__})


def on_exit(server):
    from service import startup

    startup.discard(os.environ.get(startup.SNAPSHOT_ENV))
    startup.discard_metrics_dir(server)  # if made for this web (when_ready)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
