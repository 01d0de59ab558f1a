"""What the web refuses to start on: a missing webhook token, a malformed signing token, a bad
config file. Checked by create_app in each gunicorn worker, and first by gunicorn's master
(service/gunicorn.conf.py), which imports no more than this: the app's modules would make the
master create the metric files (prometheus_client multiprocess) that its workers should. And
what it warns about once, from the master: a Redis whose maxmemory-policy evicts our keys."""

import inspect
import logging
import os
import socket
import tempfile

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service import signing
from workers.adapters import redis_connect
from workers.checks import redis_durability, redis_eviction
from workers.config.config_file import FileConfig, load_file_config
from workers.config.settings import Settings, load_settings
from workers.core.errors import ConfigError

log = logging.getLogger("ci_autoscaler.web")
# No CLIENT SETINFO on connect: the web's Redis user may not send it (helm chart, redisWebAcl),
# and each refusal would be an entry in Redis's ACL LOG. redis-py 8 says so with driver_info,
# older ones with lib_name and lib_version.
NO_CLIENT_SETINFO: dict = {"driver_info": None} \
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters \
    else {"lib_name": None, "lib_version": None}
# The master's one look at Redis: a check, which must not hold up the web's start (a web
# starts without Redis: its spool takes the pushes).
EVICTION_CHECK_TIMEOUT_SECONDS = 0.5


def require_tokens(settings: Settings) -> None:
    missing = [name for name, value in (("GITLAB_WEBHOOK_TOKEN", settings.gitlab_webhook_token),
                                        ("JENKINS_WEBHOOK_TOKEN", settings.jenkins_webhook_token))
               if value is None or not value.get_secret_value()]
    if missing and not settings.insecure_no_tokens:
        raise ConfigError([f"{name}: required (webhook tokens have no default)"
                           for name in missing])
    if missing:
        log.warning("INSECURE: webhooks accept requests without a token",
                    extra={"missing": missing})


def signing_key_of(settings: Settings) -> bytes | None:
    token = settings.gitlab_webhook_signing_token
    if token is None or not token.get_secret_value():
        return None
    try:
        return signing.signing_key(token.get_secret_value())
    except ValueError as err:  # the reason names the format, never the value
        raise ConfigError([f"GITLAB_WEBHOOK_SIGNING_TOKEN: {err}"]) from None


# Under gunicorn, the master's copy of the config file it checked (see snapshot): the file its
# workers load, whatever becomes of CI_AUTOSCALER_CONFIG's file while the web runs.
SNAPSHOT_ENV = "CI_AUTOSCALER_CONFIG_SNAPSHOT"


def configured_file(settings: Settings) -> FileConfig:
    """The routes and templates: the master's checked copy under gunicorn, else the file (also
    when the copy is gone: a temp-file cleaner may remove it from a web running for weeks)."""
    copy = os.environ.get(SNAPSHOT_ENV)
    if copy and os.path.exists(copy):
        return load_file_config(copy)
    return _source_file(settings)


def _source_file(settings: Settings) -> FileConfig:
    if not settings.config_path:
        raise ConfigError(["CI_AUTOSCALER_CONFIG: required: the path of the routes and "
                           "templates file"])
    return load_file_config(settings.config_path)


def snapshot() -> str:
    """Copy the config file, as checked, to a file of this process's own, and have the workers
    it forks from now on load that copy (SNAPSHOT_ENV). A ConfigMap volume follows its
    ConfigMap: edited in place, the file changes under the running web, and a worker that
    gunicorn starts later (one killed on its timeout or out of memory) would load the new file;
    broken, the worker cannot boot, and gunicorn either respawns it for ever or halts the whole
    web, while the workers left serve deliveries that GitLab never sends again. With the copy,
    every worker serves what the master checked until the web restarts (which checks the file
    anew) or gets SIGHUP (on_reload: a file that is refused keeps the copy). Returns its path."""
    settings = load_settings()
    try:
        with open(settings.config_path, "rb") as source:
            text = source.read()
        handle, path = tempfile.mkstemp(prefix="ci-autoscaler-config-", suffix=".yaml")
        with os.fdopen(handle, "wb") as copy:
            copy.write(text)
    except OSError as err:  # no writable temp dir: the workers read the file, as before
        log.warning("config file not copied for the web's workers; they read it themselves",
                    extra={"error": f"{type(err).__name__}: {err.strerror}"})
        discard(os.environ.pop(SNAPSHOT_ENV, None))
        return settings.config_path
    try:  # the copy is what the workers load: it must be what was checked
        load_file_config(path)
    except ConfigError:  # the file changed since check(): its own words, under its own path
        discard(path)
        _source_file(settings)
        raise
    previous = os.environ.get(SNAPSHOT_ENV)
    os.environ[SNAPSHOT_ENV] = path
    if previous and previous != path:
        discard(previous)
    return path


def discard(path: str | None) -> None:
    if path:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


# Set beside PROMETHEUS_MULTIPROC_DIR, to the same path, by whoever made that directory for this
# web alone (ensure_metrics_dir, in the master): the master removes it on exit.
# A directory given otherwise (the chart's emptyDir, one a user names) is left alone.
METRICS_DIR_MADE_ENV = "CI_AUTOSCALER_METRICS_DIR_MADE"


def ensure_metrics_dir() -> None:
    """PROMETHEUS_MULTIPROC_DIR made for this web when none is given (the image's gunicorn
    command run without it, `ci-autoscaler web`), before prometheus_client is imported (it
    reads the variable then): without one, each gunicorn worker counted its own webhooks and
    each scrape read the one that answered, which Prometheus takes for counter resets. Named
    by METRICS_DIR_MADE_ENV too, so the master removes it as it exits. A /tmp that cannot take
    it (a read-only root filesystem) is logged, and the web runs as before."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        made = tempfile.mkdtemp(prefix="ci-autoscaler-metrics-")
    except OSError as err:
        log.warning("no metrics directory: /metrics counts only the worker that answers; set "
                    "PROMETHEUS_MULTIPROC_DIR to an empty writable directory",
                    extra={"error": str(err)})
        return
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[METRICS_DIR_MADE_ENV] = made


def make_given_metrics_dir() -> None:
    """A PROMETHEUS_MULTIPROC_DIR given but not there yet is made: prometheus_client opens its
    counter files in it and never makes it, so every worker failed to boot on one
    (FileNotFoundError) and gunicorn gave up, naming no variable (the Procfile's old line put
    its own `mktemp -d` in its place). One that cannot be made, or written, is refused."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as err:
        raise ConfigError([f"PROMETHEUS_MULTIPROC_DIR: {directory} cannot be made "
                           f"({err.strerror}); give a writable directory, or none (the web "
                           "then makes one)"]) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError([f"PROMETHEUS_MULTIPROC_DIR: {directory} is not writable by this "
                           "user; give a writable directory, or none (the web then makes "
                           "one)"])


def pass_metrics_dir(server) -> None:
    """The metrics directory ensure_metrics_dir made, passed on to the master a USR2 execs: it
    gets the environment gunicorn kept when it read its config (arbiter.reexec:
    cfg.env_orig), taken before when_ready made it, so the new master made another. The two
    masters' workers, serving side by side, then counted apart (a counter reset for Prometheus
    at each switch between them), and the old master, ending with its re-executed child
    (server.reexec_pid), left its own for good. Called in the forked child (pre_exec), so the
    old master's own is untouched; a SIGHUP's new Config already took it."""
    for name in ("PROMETHEUS_MULTIPROC_DIR", METRICS_DIR_MADE_ENV):
        if os.environ.get(name):
            server.cfg.env_orig[name] = os.environ[name]


def discard_metrics_dir(server) -> None:
    """The metrics directory made for this web, removed as its last gunicorn master exits: each
    start made another under /tmp (one file per worker that ever ran in each), never removed.
    Not while another master shares it: one started by USR2 (server.reexec_pid), or the old
    one still serving beside this USR2 child (server.master_pid; gunicorn zeroes it once that
    one is gone)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory or os.environ.get(METRICS_DIR_MADE_ENV) != directory \
            or server.reexec_pid or server.master_pid:
        return
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


# sd_listen_fds(3): the first socket systemd passes is descriptor 3.
SD_LISTEN_FDS_START = 3


def require_admin_listener(settings: Settings) -> None:
    """Under systemd's socket activation (LISTEN_FDS, for this very process by LISTEN_PID:
    sd_listen_fds(3)) gunicorn listens on the passed sockets alone (gunicorn/arbiter.py start:
    systemd.listen_fds; sock.create_sockets returns those and binds no address), so an admin
    bind of a port none of them has is dropped without a word, and /metrics and /status are
    served nowhere (the public port answers 404 for them). Refused, naming both; a socket of
    the admin port passed too (a second ListenStream=) is served, and taken."""
    if not settings.admin_bind or os.environ.get("LISTEN_PID") != str(os.getpid()):
        return
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return  # gunicorn's own int() fails on it, with its message
    ports = set()
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            with socket.socket(fileno=os.dup(fd)) as passed:
                address = passed.getsockname()
        except OSError:
            continue
        if isinstance(address, tuple):
            ports.add(address[1])
    if settings.admin_port not in ports:
        raise ConfigError([f"CI_AUTOSCALER_ADMIN_BIND: gunicorn serves only the sockets "
                           f"systemd passed (LISTEN_FDS={count}, ports "
                           f"{', '.join(map(str, sorted(ports))) or 'none'}) and would never "
                           f"listen on {settings.admin_bind}; pass a socket of that port too, "
                           f"or unset CI_AUTOSCALER_ADMIN_BIND"])


def hold_spool_live() -> None:
    """The gunicorn master holds the spool's live lock too (workers.adapters.spool_live), for
    its whole life: between a worker's death and the next one's start the web still counts as
    running on it. Its workers inherit the descriptor and take their own (service.app)."""
    from workers.adapters import spool_live
    from workers.adapters.spool import Spool

    settings = load_settings()
    spool = Spool(settings.spool_path, private=settings.spool_is_default)
    # Looked at before this master takes the lock itself: another web still running on the
    # directory (a restart on a host, the old one still finishing) may have the file open.
    alone = not spool_live.held_elsewhere(spool.directory)
    if hold_live(spool):
        _HELD.append(spool)
    prepare_spool(spool, repair=alone)


def prepare_spool(spool, *, repair: bool = True) -> None:
    """The spool file brought to this version's schema by the master, before any worker opens
    it (workers.adapters.spool: Spool.prepare), and a damaged one moved aside, with `repair`
    (no other web runs on it); one that cannot be opened is left to the workers, which say
    why (service.app) and answer 503 only while Redis is away too."""
    from workers.adapters.spool import SpoolError

    try:
        seconds, repaired = spool.prepare(repair=repair)
    except SpoolError as err:
        log.warning("the spool file could not be opened before the workers start",
                    extra={"spool": str(spool.directory), "error": str(err)})
        return
    for kept in repaired:
        log.error("the spool file was damaged: moved aside and kept, the rows still readable "
                  "copied into a new one (the rest may be read with sqlite3's .recover)",
                  extra={"spool": str(spool.directory), "kept_as": str(kept.kept_as),
                         "rows_copied": kept.rows, "problem": kept.problem[:300]})
    if seconds >= 1:
        log.info("spool file made ready for this version",
                 extra={"spool": str(spool.directory), "seconds": round(seconds, 1)})


def hold_live(spool) -> bool:
    """The spool's live lock held (True), or why not logged (an unusable directory): the web
    still starts, and another installation of this name on this host may then count this
    spool as stranded."""
    from workers.adapters.spool import SpoolError

    try:
        spool.hold_live()
    except SpoolError as err:
        log.error("the spool's live lock cannot be held: another installation of this name "
                  "on this host may count this spool as stranded",
                  extra={"spool": str(spool.directory), "error": str(err)})
        return False
    return True


_HELD: list = []  # the master's spool, its live lock held until the process ends


def warn_if_evicting() -> None:
    """Once, from gunicorn's master: a warning when the web's Redis has a maxmemory-policy that
    deletes our keys at maxmemory (workers.checks.redis_eviction), in the words and the log
    line of the worker's and the reconcile loop's start-up checks; and what Redis may lose
    of what a 202 promises (workers.checks.redis_durability). Never a refusal (an
    operator may run so knowingly). A Redis that refuses the web's user INFO is not checked
    (one info line), nor one that does not answer yet; one that refuses REDIS_URL itself (its
    password, its database) is a warning."""
    connection = None
    try:
        settings = load_settings()
        connection = settings.redis_client(
            socket_timeout=EVICTION_CHECK_TIMEOUT_SECONDS,
            socket_connect_timeout=EVICTION_CHECK_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0), **NO_CLIENT_SETINFO)
        # A database Redis has not (/16 with `databases 16`) is refused at the connection's
        # SELECT: asked apart, so that INFO's refusal (problems) is not taken for it
        connection.ping()
        found = redis_eviction.problems(connection)
        risks = redis_durability.risks(connection, config=False,
                                       replicated=redis_durability.replicated(settings))
    except redis_connect.SentinelsRefused as err:
        # One of REFUSED, but the sentinels' setting: its text names it and the sentinels by
        # address, never a value (redis_connect). Read as REDIS_URL's, the wrong Secret was
        # mended.
        log.warning("Redis's sentinels refuse the web: pushes go to the spool until it is "
                    "fixed", extra={"error": redis_connect.shown(err)})
        return
    except redis_connect.REFUSED as err:
        # Redis answers and refuses REDIS_URL's user or password: no wait mends it (the
        # worker and the reconcile loop exit 2 on it), and every push goes to the spool until
        # the setting is fixed. It read "Redis does not answer", at info.
        log.warning("Redis refuses REDIS_URL's user or password: pushes go to the spool "
                    "until it is fixed", extra={"error": type(err).__name__})
        return
    except redis.RedisError as err:
        if redis_connect.settings_refused(err):
            # Redis answers and refuses what REDIS_URL asks (`ERR DB index is out of range`,
            # NOPERM for PING): no wait mends it (the worker and the reconcile loop exit 2 on
            # it). Redis' own words, which quote no password. It read "INFO refused", at info.
            log.warning("Redis refuses what REDIS_URL asks of it: pushes go to the spool "
                        "until it is fixed", extra={"error": str(err)[:200]})
            return
        log.info(redis_eviction.NOT_CHECKED, extra={"reason": "Redis does not answer",
                                                    "error": type(err).__name__})
        return
    except Exception as err:  # a check: whatever it meets, the web starts (its spool serves)
        log.warning(redis_eviction.NOT_CHECKED, extra={"reason": "unexpected error",
                                                       "error": type(err).__name__})
        return
    finally:
        if connection is not None:
            connection.close()
    for problem in found or ():
        log.warning("start-up check found a problem",
                    extra={"component": "web", "problem": problem})
    for risk in risks:  # what a 202 from Redis may not keep (workers.core.redis_durability)
        log.warning("start-up check found a risk", extra={"component": "web", "risk": risk})


def check() -> None:
    """Everything above, from the environment, starting nothing (ConfigError if refused); the
    config file itself, never the master's copy of it."""
    settings = load_settings()
    require_tokens(settings)
    require_admin_listener(settings)
    signing_key_of(settings)
    _source_file(settings)
