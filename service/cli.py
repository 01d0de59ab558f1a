"""The `ci-autoscaler` command: check-config, demo, simulate, generate-trace, web, worker,
reconcile, catch-up, recommend, spool, run."""

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

# Light imports only, here: the worker and the reconcile loop take SIGTERM from main() on
# (_stop_on_signals), and until then it kills them. The settings and the config file (pydantic,
# Redis, the pod schemas: most of a second) are imported where they are used.
from workers.telemetry import liveness, logs
from workers.core.errors import ConfigError

EXIT_CONFIG = 2
GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")


def _refused(err: ConfigError) -> int:
    """Each problem of a refused setting or file on stderr, one line each; the exit code."""
    for problem in err.problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _check_config(args: argparse.Namespace) -> int:
    from workers.config.config_file import load_file_config

    try:
        config = load_file_config(args.file)
    except ConfigError as err:
        return _refused(err)
    if args.log_as:
        return _log_live(config, args.log_as)
    warnings = _warnings(args.file, config)
    print(f"{args.file}: ok ({len(config.routes)} routes, {len(config.templates)} templates"
          f"{_count(warnings)})")
    return _check_live(config) if args.live else 0


def _check_live(config) -> int:
    """The file against the real Jenkins and cluster of the environment (workers.checks.live):
    exit 2 with one line per problem, 0 with what was checked."""
    from workers.config.settings import load_settings
    from workers.checks import live

    try:
        settings = load_settings()
    except ConfigError as err:
        return _refused(err)
    report = live.run(settings, config)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for risk in report.warnings:
        print(f"warning: {risk}", file=sys.stderr)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.problems:
        return EXIT_CONFIG
    print(f"live: ok ({'; '.join(report.checked)})")
    return 0


def _count(warnings: list[str]) -> str:
    return "" if not warnings else f", {len(warnings)} warning{'s' if len(warnings) > 1 else ''}"


def _warnings(path: str, config) -> list[str]:
    """Things a file that loads may still break on a cluster: printed, but not an error."""
    from workers.config.config_warnings import file_warnings

    warnings = file_warnings(path, config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return warnings


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    logs.configure("WARNING")
    try:
        return run_demo(pushes=args.pushes, nodes=args.nodes, seed=args.seed,
                        timeout=args.timeout)
    except ConfigError as err:  # the environment's settings, named (never their values)
        return _refused(err)


def _simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workers.sim.simulate import simulate

    try:
        summaries = simulate(args.trace, Path(args.out), seed=args.seed,
                             with_plots=not args.no_plots)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:  # --out names a file, or a directory it may not write in
        print(f"error: --out {args.out}: {err.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    width = max(len(s.strategy) for s in summaries)  # the strategies' names line up
    for s in summaries:
        print(f"{s.strategy:<{width}} wait p95 {s.wait_p95:7.0f}s  run mean {s.run_mean:6.0f}s  "
              f"saturation {s.saturation_node_seconds:8.0f} node-s  OOM {s.failed_oom}")
    print(f"report in {args.out}")
    return 0


def _generate_trace(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workers.sim.traces import bundled, generated, write_csv

    if args.kind == "generated" and (args.builds < 1 or args.nodes < 1):
        print("error: --builds and --nodes: at least 1", file=sys.stderr)
        return EXIT_CONFIG
    scenario = generated(builds=args.builds, nodes=args.nodes, seed=args.seed) \
        if args.kind == "generated" else bundled(args.kind, args.seed)
    try:
        write_csv(scenario.builds, Path(args.out))
    except OSError as err:  # its directory missing, or not writable
        print(f"error: --out {args.out}: {err.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.out}: {len(scenario.builds)} builds ({scenario.description})")
    return 0


def _web(args: argparse.Namespace) -> int:
    """gunicorn with the shipped config: the Procfile's web line, the image's command, the
    chart's, `ci-autoscaler run`'s. Its workers' counters add up on /metrics only with
    PROMETHEUS_MULTIPROC_DIR; gunicorn's master makes one when none is given, once it listens
    (service/gunicorn.conf.py when_ready), and removes it as it exits."""
    from workers.config.settings import load_settings

    # The environment is checked before gunicorn is: its config module reads WEB_CONCURRENCY
    # as it is imported, and `two` (or an empty value) was a ValueError traceback there,
    # before our start-up check.
    try:
        load_settings(warn_unknown=False)  # gunicorn's master warns
    except ConfigError as err:
        return _refused(err)
    # gunicorn's own script, run by this interpreter: a USR2 re-executes the master with the
    # arguments it was started with (gunicorn arbiter: START_CTX, sys.argv). Started as
    # `python -m gunicorn`, that was `python .../gunicorn/__main__.py`, whose directory, put
    # first on sys.path, holds gunicorn's `http` package: the new master's workers failed to
    # import the standard library's http.server, and it shut down ("Worker failed to boot").
    script = Path(sysconfig.get_path("scripts")) / "gunicorn"
    command = [str(script)] if script.is_file() else ["-m", "gunicorn"]
    os.execv(sys.executable, [sys.executable, *command, "-c", str(GUNICORN_CONF),
                              "service.wsgi:app"])
    return 1  # not reached


def _runtime_or_exit(stop=None, *, log: logging.Logger, one_try: bool = False,
                     alive=liveness.nothing):
    """The runtime; exit 2 on bad settings (before taking any job), 0 if `stop` was set while
    it waited for the cluster (a SIGTERM during start-up). An API server that gives no list
    of the cluster within the runtime's minute is waited for, as Redis is (_await_redis),
    saying so each minute and calling `alive`: exiting stopped every process of a Procfile
    runner, the web with them, and GitLab does not send a refused push again. `one_try` (a
    burst worker, `reconcile --once`): an error line and exit 1 instead."""
    from workers import runtime
    from workers.core.errors import RetryableError

    started = time.monotonic()
    while True:
        try:
            return runtime.current(stop)
        except ConfigError as err:
            sys.exit(_refused(err))
        except runtime.StartStopped:
            sys.exit(0)
        except RetryableError as err:  # the cluster snapshot did not sync
            alive()
            if one_try:
                print(f"error: Kubernetes API unavailable ({err})", file=sys.stderr)
                sys.exit(1)
            log.warning("Kubernetes API unavailable: waiting for it",
                        extra={"error": str(err),
                               "waited_seconds": round(time.monotonic() - started)})
            if stop is not None and stop.is_set():
                sys.exit(0)


def _log_live(config, component: str) -> int:
    """`check-config --log-as COMPONENT`: the live checks, each problem logged as a warning
    (JSON lines, as the service logs); always exits 0."""
    from workers.config.settings import load_settings
    from workers.checks import live

    logs.configure("INFO")
    try:
        # its worker or reconcile process has logged the variables no setting reads
        report = live.run(load_settings(warn_unknown=False), config)
    except Exception as err:  # a check that cannot run must not look like a crash
        logging.getLogger("ci_autoscaler.checks.live").warning(
            "start-up checks could not run",
            extra={"component": component, "error": type(err).__name__})
        return 0
    live.log_report(report, component=component)
    return 0


def _start_up_checks(rt, component: str) -> subprocess.Popen:
    """The live checks of `check-config --live`, run once at start-up in a process of their
    own (start-up does not wait, and no thread of theirs is left when this one exits), their
    problems logged as warnings to the same stderr: never fatal."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "check-config", "--log-as", component,
         str(rt.settings.config_path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _stop(checks: subprocess.Popen | None) -> None:
    """End the start-up checks' process if it still runs (this process is exiting)."""
    if checks is None or checks.poll() is not None:
        return
    checks.terminate()
    try:
        checks.wait(timeout=5)
    except subprocess.TimeoutExpired:
        checks.kill()
        checks.wait()


def _worker(args: argparse.Namespace) -> int:
    """An RQ worker that runs jobs in its own process, CI_AUTOSCALER_PROVISION_CONCURRENCY of
    them at once on threads (workers.concurrency.pool_worker): the watched cluster snapshot
    stays in one process instead of a stale copy per forked job. What jobs count goes to Redis
    (workers.telemetry.metrics), so it would survive a fork too."""

    from workers.engine import jobs, tasks
    from workers.concurrency.pool_worker import PoolWorker
    from workers.adapters.redis_state import SERIALIZER
    from workers.engine.intake import Mover

    logs.configure(args.log_level)
    # Until RQ's worker is made, a signal only sets this (from main() on): the runtime's wait
    # for the cluster snapshot (a minute at most) and the wait for Redis below both end on it,
    # exit 0.
    stopping = getattr(args, "stopping", None) or _stop_on_signals()
    if stopping.is_set():  # while the modules above were imported: nothing begun yet
        return 0
    # The liveness file (workers.telemetry.liveness), touched from now on: while the cluster snapshot
    # and Redis are waited for, then as RQ's work loop goes round.
    alive = liveness.from_env()
    rt = _runtime_or_exit(stopping, log=logging.getLogger("ci_autoscaler.worker"),
                          one_try=args.burst, alive=alive)
    connection = rt.settings.redis_client()  # its own: RQ's blocking reads hold one
    # RQ's worker asks Redis for its name as it is made: a Redis not answering yet (restarting,
    # or starting beside this process) is waited for, as the web (its spool) and the reconcile
    # loop (its lease) do, rather than exiting, which stops every process of a Procfile runner.
    # A burst run is one-shot: it says so and fails instead of waiting.
    answered = _await_redis(connection, stopping, logging.getLogger("ci_autoscaler.worker"),
                            one_try=args.burst, alive=alive)
    if not answered:
        rt.close()
        return EXIT_CONFIG if answered is None else 1 if args.burst else 0
    # Once Redis answers, as the reconcile loop's (they read its maxmemory-policy too). A burst
    # worker is a one-shot run (like `reconcile --once`): no start-up checks.
    checks = None if args.burst else _start_up_checks(rt, "worker")
    worker = PoolWorker([rt.settings.queue_name], connection=connection,
                        concurrency=rt.settings.provision_concurrency,
                        alive=alive,  # the pod's liveness probe reads it
                        serializer=SERIALIZER,  # JSON: never pickle
                        job_class=jobs.TaskJob,  # and only our tasks run
                        secrets=rt.settings.secret_values)  # never in a failure's text
    worker.push_exc_handler(jobs.failure_handler(tasks.engine_metrics(rt), rt.state))
    # RQ registers the worker (and starts its scheduler) before it installs its own signal
    # handlers, so a SIGTERM in between killed a registered worker outright (exit -15, its
    # registration left to expire). Until RQ's handlers take over, a signal only asks the
    # work loop to stop at its first check: RQ's own request_stop raises StopRequested
    # wherever the signal lands, and during the start-up that escaped as exit 1. (The
    # scheduler's process, forked meanwhile, stops its scheduler on it: see PoolWorker.)
    signal.signal(signal.SIGTERM, worker.stop_at_first_check)
    signal.signal(signal.SIGINT, worker.stop_at_first_check)
    if stopping.is_set():  # a signal while the worker was being made (one landing just now
        worker._stop_requested = True  # set it already: never overwrite it with False)
    # The pushes the webhook stored become provision jobs here (workers.engine.intake): before the
    # jobs of a burst run, or all along, in a thread, for a worker that keeps running.
    # Builds made anew from each push with this worker's routes: the web's Redis user may
    # append to the intake, and the routes may have changed since the web took the push.
    # A STARTED's run page is recorded only under this worker's Jenkins URL (run_links).
    mover = Mover(rt.state, name=worker.name, routes=rt.config.routes,
                  installation=rt.settings.installation, jenkins_url=rt.settings.jenkins_url,
                  jenkins_public_url=rt.settings.jenkins_public_url)
    mover_thread = mover_stop = None
    try:
        if args.burst:
            mover.drain()
        else:
            mover_thread, mover_stop = mover.start()
        # The scheduler moves retried jobs back to the queue when their pause is over.
        worker.work(burst=args.burst, logging_level=args.log_level, with_scheduler=True)
    finally:
        _stop(checks)
        if mover_thread is not None and mover_stop is not None:
            mover_stop.set()
            mover_thread.join(timeout=mover.block_seconds + 5)
        rt.close()
    return 0


def _await_redis(connection, stop: threading.Event, log: logging.Logger, *,
                 one_try: bool = False, alive=liveness.nothing) -> bool | None:
    """Wait for Redis to answer (True), or `stop` (False), saying why the process waits, once
    and then once a minute (`one_try`: it says so, as an error, and does not wait), and calling
    `alive` as often (waiting is not wedged). None, with the setting named, when Redis answers
    and refuses REDIS_URL's user or password, its database or its user's PING, or every
    sentinel refuses REDIS_SENTINEL_PASSWORD past
    redis_connect.SENTINELS_REFUSED_GRACE_SECONDS: no wait mends the process's own
    environment (never its value)."""
    from workers.adapters import redis_connect

    def waiting(err: Exception, waited: float) -> None:
        alive()
        # The sentinels' reasons, by address (never a password): a type alone told a wrong
        # REDIS_SENTINEL_PASSWORD from sentinels down by nothing (MasterNotFoundError).
        # Redis' reply when it refuses PING for a while (BUSY, MISCONF), which the type
        # (ResponseError) alone hid.
        detail = {"detail": str(err)} if isinstance(err, redis_connect.NoMasterFromSentinels) \
            or redis_connect.passing_reply(err) else {}
        if one_try:
            reply = f": {err}" if redis_connect.passing_reply(err) else ""
            print(f"error: Redis unavailable ({redis_connect.shown(err)}{reply})",
                  file=sys.stderr)
        elif not waited:
            log.warning("Redis unavailable: waiting for it",
                        extra={"error": type(err).__name__, **detail})
        else:
            log.warning("Redis still unavailable: waiting for it",
                        extra={"error": type(err).__name__, "waited_seconds": round(waited),
                               **detail})

    tried = threading.Event()
    tried.set()
    try:
        return redis_connect.await_redis(connection, tried if one_try else stop,
                                         waiting=waiting)
    except redis_connect.SentinelsRefused as err:  # its text names the setting, no value
        print(f"error: {err}", file=sys.stderr)
        return None
    except redis_connect.REFUSED as err:
        print(f"error: REDIS_URL: Redis refuses its user or password ({type(err).__name__})",
              file=sys.stderr)
        return None
    except redis_connect.SettingRefused as err:  # its database, or PING for its user
        print(f"error: REDIS_URL: Redis refuses it: {err}", file=sys.stderr)
        return None


def _reconcile(args: argparse.Namespace) -> int:
    from workers.engine import catchup, reconcile
    from workers.adapters import gitlab as gitlab_api
    from workers.commit_statuses import sender as status_sender

    logs.configure(args.log_level)
    alive = liveness.from_env()  # the pod's liveness probe reads it (workers.telemetry.liveness)
    # Before the runtime: building it lists the cluster and may take a while (a slow API
    # server), and a SIGTERM then (a rollout, `honcho` stopping) killed the process outright
    # (exit -15). Now it ends the wait for the cluster (exit 0), or the loop before its first
    # pass. (Taken from main() on: before the modules above were imported.)
    stop = getattr(args, "stopping", None) or _stop_on_signals()
    if stop.is_set():  # while the modules above were imported: nothing begun yet
        return 0
    rt = _runtime_or_exit(stop, log=logging.getLogger("ci_autoscaler.reconcile"),
                          one_try=args.once, alive=alive)
    checks = catching_up = sending = None
    try:
        if args.once:
            print(json.dumps(reconcile.reconcile_once(rt)))
        else:
            # A Redis not answering yet is waited for (the lease loop would retry it anyway);
            # one that refuses our user or password took every pass's lease for ever
            answered = _await_redis(rt.state.redis, stop,
                                    logging.getLogger("ci_autoscaler.reconcile"), alive=alive)
            if not answered:
                return EXIT_CONFIG if answered is None else 0
            checks = _start_up_checks(rt, "reconcile")
            # The catch-up from GitLab's API, when configured: a thread and a lease of its own,
            # so a slow or throttled GitLab never delays a reconcile pass.
            cu = catchup.from_settings(rt.settings, rt.config, rt.state)
            catching_up = catchup.start(cu) if cu is not None else None
            # GitLab commit statuses, when configured: a thread of their own likewise, so
            # no post ever delays provisioning or a reconcile pass.
            sender = status_sender.from_settings(rt.settings, rt.state, rt.capacity)
            sending = status_sender.start(sender) if sender is not None else None
            reconcile.run_forever(rt, stop, interval=args.interval, alive=alive)
    finally:
        _stop(checks)
        _stop_sides([side for side in (catching_up, sending) if side is not None],
                    seconds=gitlab_api.CALL_TIMEOUT_SECONDS + 5)
        rt.close()
    return 0


def _stop_sides(sides: list[tuple[threading.Thread, threading.Event]], seconds: float) -> None:
    """Ask the GitLab side threads (catch-up, commit statuses) to stop, all of them before
    any is waited for, and wait `seconds` for them all together: each joined with `seconds` of
    its own, one still in a slow GitLab call after the first's wait was waited for again, up
    to twice `seconds` past the pass, past the pod's grace period. They are daemon threads: one
    still running then ends with the process (its lease expires by itself)."""
    for _thread, thread_stop in sides:
        thread_stop.set()
    deadline = time.monotonic() + seconds
    for thread, _thread_stop in sides:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _redis_side():
    """(settings, config, Redis state) for a command that needs no cluster or Jenkins; None
    (the problems printed) when the settings or the config file are bad."""
    from workers.adapters.redis_state import RedisState
    from workers.config.config_file import load_file_config
    from workers.config.settings import load_settings

    try:
        settings = load_settings()
        if not settings.config_path:
            raise ConfigError(["CI_AUTOSCALER_CONFIG: required"])
        config = load_file_config(settings.config_path)
    except ConfigError as err:
        _refused(err)
        return None
    return settings, config, RedisState(settings.redis_client(), prefix=settings.key_prefix,
                                        queue_name=settings.queue_name)


def _catch_up(args: argparse.Namespace) -> int:
    """The catch-up alone (workers.engine.catchup): GitLab's API and Redis, no cluster or Jenkins."""
    import threading

    import redis

    from workers.core.errors import RetryableError
    from workers.engine import catchup

    logs.configure(args.log_level)
    loaded = _redis_side()
    if loaded is None:
        return EXIT_CONFIG
    settings, config, state = loaded
    # Asked before from_settings, which forgets the catch-up's passes when it is off (for the
    # reconcile process): run where GitLab is not configured (the web pod), it wiped the
    # failing streak of the reconcile pods' passes, and CIGitLabCatchUpFailing resolved.
    cu = catchup.from_settings(settings, config, state) if settings.catch_up_enabled else None
    if cu is None:
        print("error: GITLAB_URL and GITLAB_API_TOKEN: required for the catch-up",
              file=sys.stderr)
        return EXIT_CONFIG
    if args.once:  # a pass a project or group failed in: 1, for a cron or script to see
        try:
            result = catchup.catch_up_once(cu)
        except (redis.RedisError, RetryableError) as err:
            return _redis_failed(err, settings)
        print(json.dumps(result))
        return 1 if catchup.pass_failed(result) else 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    catchup.run_forever(cu, stop, interval=args.interval)
    return 0


def _redis_failed(err: Exception, settings) -> int:
    """One line for a command Redis failed: where it asked (settings.redis_target, no
    password) and the error's type (redis-py's text may name the URL and its password), and
    whether that was only the default; exit 1. The state adapters raise RetryableError for a
    Redis they cannot reach, its cause redis-py's error."""
    import redis

    cause = err.__cause__ if isinstance(err.__cause__, redis.RedisError) else err
    default = "" if settings.redis_named else \
        " (neither REDIS_URL nor REDIS_SENTINELS is set: this is the default)"
    print(f"error: Redis at {settings.redis_target}: {type(cause).__name__}{default}",
          file=sys.stderr)
    return 1


def _recommend(args: argparse.Namespace) -> int:
    """Per job: its history, today's default and the recommended size (workers.job_history)."""
    import time

    import redis

    from workers.core.errors import RetryableError
    from workers.job_history import report

    loaded = _redis_side()
    if loaded is None:
        return EXIT_CONFIG
    settings, config, state = loaded
    try:
        table = report.rows(settings, config, state, now=time.time())
    except (redis.RedisError, RetryableError) as err:
        return _redis_failed(err, settings)
    print(report.as_json(table) if args.json else report.as_text(table))
    return 0


def _spool(args: argparse.Namespace) -> int:
    """`spool list` and `spool adopt` (workers.adapters.spool_adopt): the spool of this web's
    settings (CI_AUTOSCALER_SPOOL_DIR, or its default directory), no Redis needed."""
    from workers.adapters.spool import LEGACY_OWNER, Spool, SpoolError
    from workers.adapters import spool_adopt
    from workers.config.settings import load_settings

    try:
        settings = load_settings()
    except ConfigError as err:
        return _refused(err)
    me = settings.spool_owner
    directory = args.dir or settings.spool_path
    if args.dir and not os.path.isdir(args.dir):  # a path mistyped read as an empty spool
        print(f"error: --dir {args.dir}: no such directory", file=sys.stderr)
        return 1
    try:
        found = spool_adopt.owners(directory)
    except SpoolError as err:
        print(f"error: {directory}: {err}", file=sys.stderr)
        return 1
    if args.action == "list":
        print(f"{directory}: this web's owner is {me!r}")
        for owner, events in found.items():
            whose = "this web's" if owner == me else "earlier versions'" \
                if owner == LEGACY_OWNER else "another owner's"
            print(f"{events:8d}  {owner!r} ({whose})")
        return 0
    # Rows this installation took into another Redis: its own pushes, safe to take. Another
    # installation's only when named: built here, they would never be built by their own.
    mine = f"{settings.installation or '-'} redis:"
    chosen = set(args.owner or ()) if not args.other_redis else {
        owner for owner in found if owner.startswith(mine) and owner != me}
    if args.owner and (unknown := set(args.owner) - set(found)):
        print(f"error: {directory}: no rows of {', '.join(map(repr, sorted(unknown)))}",
              file=sys.stderr)
        return 1
    spool = Spool(settings.spool_path, owner=me, private=settings.spool_is_default,
                  max_events=settings.spool_max_events, max_bytes=settings.spool_max_bytes)
    try:
        adopted = spool_adopt.adopt(spool, directory, chosen)
    except SpoolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        spool.close()
    print(f"{adopted.moved} push(es) of {', '.join(map(repr, sorted(chosen))) or 'no owner'} "
          f"adopted into {spool.directory} as {me!r}; {adopted.duplicates} already spooled "
          "by it (dropped: the same delivery)")
    for owner in sorted(set(found) - chosen - {me, LEGACY_OWNER}):
        print(f"left alone: {found[owner]} push(es) of {owner!r} (name it with --owner)")
    return 0


def _run(args: argparse.Namespace) -> int:
    """Web, worker and reconcile as child processes, as the Procfile runs them; SIGTERM stops
    them all, and so does the end of any one of them (as honcho and foreman do): a web that
    could not bind its port no longer leaves the worker and the reconcile loop running under a
    command that never returns. The exit code is the first child's to end."""
    me = [sys.executable, "-m", "service.cli"]
    children = {c.pid: c for c in (subprocess.Popen(me + [name])
                                   for name in ("web", "worker", "reconcile"))}
    signal.signal(signal.SIGTERM, lambda *_: [c.terminate() for c in children.values()])
    first: int | None = None
    try:
        while any(c.returncode is None for c in children.values()):
            pid, status = os.wait()  # the next child to end, whichever it is
            if pid in children:
                children[pid].returncode = os.waitstatus_to_exitcode(status)
                first = children[pid].returncode if first is None else first
                for c in children.values():
                    if c.returncode is None:
                        c.terminate()
    except KeyboardInterrupt:
        for c in children.values():
            if c.returncode is None:
                c.terminate()
        for c in children.values():
            c.wait()
    return first if first is not None else max(c.returncode for c in children.values())


# The alerts expect a pass at least this often: CICapacityStateStale at 120 s, and
# CIReconcileNotRunning at 300 s without one (dashboards/alerts.yaml).
MAX_RECONCILE_INTERVAL_SECONDS = 120.0


def _pass_interval(text: str) -> float:
    """--interval of the reconcile loop: seconds, above 0 and at most 120."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_RECONCILE_INTERVAL_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text}: must be above 0 and at most {MAX_RECONCILE_INTERVAL_SECONDS:.0f} seconds "
            "(the capacity figures go stale after 120 s, and the alerts say so)")
    return value


def _at_least_one(text: str) -> int:
    """A count of at least 1 (demo --pushes 0 was an IndexError traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


def _positive_seconds(text: str) -> float:
    """catch-up --interval: seconds above 0, as CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS (a
    negative one made every pass's lease a Redis error, passes back to back)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0")
    return value


# --log-level of the long-running commands: a level's name in any case (`debug` was a
# traceback from logging's "Unknown level"), one of the chart's settings.logLevel.
LOG_LEVEL = dict(default="INFO", type=str.upper,
                 choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ci-autoscaler", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-config", help="validate a routes/templates file; exit 2 if bad")
    c.add_argument("file")
    c.add_argument("--live", action="store_true", help="also check the environment's Redis "
                   "(a maxmemory-policy that evicts no key), Jenkins (jobs and their "
                   "parameters, agent registration) and cluster (RBAC, the agent namespace and "
                   "its Pod Security level, metrics-server)")
    c.add_argument("--log-as", metavar="COMPONENT", help="run the live checks and log each "
                   "problem as a warning of COMPONENT, exit 0 (what the worker and the "
                   "reconcile loop run at start-up)")
    c.set_defaults(func=_check_config)
    d = sub.add_parser("demo", help="the whole flow on a simulated cluster and Jenkins")
    d.add_argument("--pushes", type=_at_least_one, default=24)
    d.add_argument("--nodes", type=_at_least_one, default=3)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--timeout", type=float, default=50)
    d.set_defaults(func=_demo)
    m = sub.add_parser("simulate", help="replay a build trace against static agents, "
                       "requests-only pods, ci-autoscaler, ci-autoscaler sized from each "
                       "job's history, and that with warm agents, in virtual time")
    m.add_argument("--trace", required=True,
                   help="a bundled trace (steady, burst, skewed, mixed) or a CSV file")
    m.add_argument("--out", required=True, help="directory for the table and the plots")
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--no-plots", action="store_true")
    m.set_defaults(func=_simulate)
    g = sub.add_parser("generate-trace", help="write a seeded build trace as CSV")
    g.add_argument("--kind", default="steady",
                   choices=["steady", "burst", "skewed", "mixed", "generated"])
    g.add_argument("--builds", type=int, default=10000, help="for --kind generated: about "
                   "this many (arrivals are random; the line written says how many)")
    g.add_argument("--nodes", type=int, default=200, help="for --kind generated: the builds "
                   "arrive as fast as N nodes of 8 cores take them (`simulate` replays a CSV "
                   "on its default cluster of 30 nodes)")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--out", required=True)
    g.set_defaults(func=_generate_trace)
    w = sub.add_parser("web", help="serve the webhooks under gunicorn")
    w.set_defaults(func=_web)
    k = sub.add_parser("worker", help="run an RQ worker for provision/release jobs")
    k.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    k.add_argument("--log-level", **LOG_LEVEL)
    k.set_defaults(func=_worker)
    c = sub.add_parser("reconcile", help="the reconcile loop: re-drive waiting builds, "
                       "replace unschedulable pods, refresh the capacity state; with GitLab "
                       "configured, also the catch-up and the commit statuses")
    c.add_argument("--once", action="store_true", help="one pass, printed as JSON")
    c.add_argument("--interval", type=_pass_interval, default=15.0,
                   help="seconds between passes (above 0, at most 120)")
    c.add_argument("--log-level", **LOG_LEVEL)
    c.set_defaults(func=_reconcile)
    u = sub.add_parser("catch-up", help="build the pushes whose webhooks never came, from "
                       "GitLab's API (the reconcile loop runs it too, when GITLAB_URL is set)")
    u.add_argument("--once", action="store_true",
                   help="one pass, printed as JSON (exit 1 if a project or group failed)")
    u.add_argument("--interval", type=_positive_seconds, default=None,
                   help="seconds between passes (default CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS)")
    u.add_argument("--log-level", **LOG_LEVEL)
    u.set_defaults(func=_catch_up)
    e = sub.add_parser("recommend", help="per job: builds seen, today's default, the size "
                       "its history recommends, p95 peak memory, OOM kills, memory freed")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(func=_recommend)
    s = sub.add_parser("spool", help="the web's spool: list its rows by owner, or adopt "
                       "another owner's (its Redis moved with pushes spooled)")
    actions = s.add_subparsers(dest="action", required=True)
    s_list = actions.add_parser("list", help="rows by owner, this web's named")
    s_adopt = actions.add_parser("adopt", help="make another owner's rows this web's, to be "
                                 "drained into its Redis (the intake still drops a delivery it "
                                 "has taken)")
    for action in (s_list, s_adopt):
        action.add_argument("--dir", help="the spool directory to read (default: this web's: "
                            "CI_AUTOSCALER_SPOOL_DIR, or its default one); from another "
                            "directory the rows are moved into this web's spool")
    chosen = s_adopt.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--owner", action="append", help="an owner as `spool list` prints "
                        "it (repeatable)")
    chosen.add_argument("--other-redis", action="store_true", help="every owner of this "
                        "installation with another Redis target (REDIS_URL, Sentinel master, "
                        "database or key prefix changed)")
    s.set_defaults(func=_spool)
    r = sub.add_parser("run", help="web, worker and reconcile together against the environment")
    r.set_defaults(func=_run)
    return p


def _stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set from now on, for a command that stops cleanly on it."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    return stopping


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.func in (_worker, _reconcile):
        # Kubernetes sends SIGTERM on every pod deletion and rollout. Taken before the
        # command imports its modules (a second or two: settings, Redis, RQ, Kubernetes),
        # during which it killed the process (exit -15); the command stops on it once they
        # are in.
        args.stopping = _stop_on_signals()
    logging.captureWarnings(True)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # Ctrl-C before a command took SIGINT for itself (the demo's imports, seconds on a
        # busy machine): a word and the shell's code for it, not the import stack
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
