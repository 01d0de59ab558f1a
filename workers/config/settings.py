"""The environment's settings: one validated Settings object, every variable with its default
and bounds, and the checks that refuse a bad value by its variable's name (never quoting the
value, which may hold a password). `load_settings()` raises ConfigError naming each field at
fault and the reason; the YAML file of routes and templates is workers.config.config_file's."""

import hashlib
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic import ValidationInfo, field_validator, model_validator
from redis.connection import parse_url
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.adapters import redis_connect
from workers.adapters.spool import MAX_BYTES as SPOOL_MAX_BYTES, MAX_EVENTS as SPOOL_MAX_EVENTS
from workers.core.cluster import Resources
from workers.core.errors import ConfigError
from workers.core.placement import DEFAULT_CANDIDATES
from workers.core.quantity import cpu_millis, memory_bytes
from workers.core.redaction import URL_USERINFO
from workers.core.recommend import DEFAULT_MEMORY_MARGIN, DEFAULT_MIN_BUILDS, MAX_MEMORY_MARGIN
from workers.core.scale_up import DEFAULT_IMAGE as SCALE_UP_IMAGE, DEFAULT_LIMIT as SCALE_UP_LIMIT
from workers.core.image_pulls import PULL_RETRY_SECONDS
from workers.core.start_failures import DEFAULT_FATAL_WAITING_REASONS
from workers.core.usage_history import DEFAULT_HALF_LIFE_SECONDS
from workers.config import unknown_variables
from workers.config.sent_credentials import sent_forms, url_forms
from workers.config.spool_paths import default_spool_path
from workers.telemetry import logs

# A webhook body up to this is read whole and parsed. A GitLab push lists at most 20 commits (its
# docs): the real push in ../shared/fixtures is 3.5 KB with 3 commits, so 4 MiB leaves room for
# 20 commits with long messages and thousands of changed files each. Memory per request is about
# the body (workers.core.push_payload), 16 requests at once (2 workers x 8 threads) about 64
# MiB. A larger body is read in pieces and trimmed to the fields read, within this bound
# (service.trimmed_body): a push of a commit that vendors a tree is larger, and is still built.
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
# The fields a push is read for, kept within the same bound (service.trimmed_body): about 500
# bytes for the real push of the fixtures, more for a long ref, project path or user name.
# Below this, a value meant in MiB ("4") started the web and every push was ignored (200).
MIN_MAX_BODY_BYTES = 1024
DEDUPE_TTL_SECONDS = 7 * 24 * 3600  # a delivery id is recognised this long
BUILD_TTL_SECONDS = 7 * 24 * 3600  # a finished build's state is kept this long
# A commit's run mark (commit:<key>, workers.adapters.intake: its run is in flight) is deleted
# with its run's state, build_ttl_seconds after the run ended (workers.adapters.expiry); its own
# TTL is only a backstop, so it is never shorter than this: given the build TTL from the push,
# a run longer than that (its wait for room included) was no longer in flight while it ran.
RUN_MARK_MIN_TTL_SECONDS = 30 * 24 * 3600
WEBHOOK_MAX_SKEW_SECONDS = 5 * 60  # the Standard Webhooks default tolerance
CATCH_UP_INTERVAL_SECONDS = 120  # how often the catch-up compares GitLab's heads with builds
# An HTTP header line as python-jenkins splits it (name before the first ':', kept as written):
# the name an RFC 9110 token, no white space around it.
_HEADER_LINE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+:.*")
_WAITING_REASON = re.compile(r"^[A-Z][A-Za-z]{1,62}$")  # the kubelet's reasons: CamelCase words
# An installation's identity: words a person reads in a Jenkins node's description
# ("prod/ci-autoscaler", "team-a.staging").
# At most 200: the chart's "<namespace>/<release>" is up to 63 + 1 + 53.
_INSTALLATION = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,198}[A-Za-z0-9])?")


# Why a URL setting may carry no user:password@ (Settings._url_without_credentials).
_NO_USERINFO = {
    "JENKINS_URL": "the credentials go in JENKINS_USER and JENKINS_API_TOKEN",
    "JENKINS_AGENT_URL": "it is put in every agent pod's environment; an agent connects with "
                         "its own secret",
    "JENKINS_PUBLIC_URL": "it is shown to users as a link",
    "GITLAB_URL": "the token goes in GITLAB_API_TOKEN"}

# The settings that are http(s) URLs: Jenkins' (API, agents', users') and GitLab's.
HTTP_URL_FIELDS = ("jenkins_url", "jenkins_agent_url", "jenkins_public_url", "gitlab_url")


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything that comes from the environment. Secrets are SecretStr and have no default."""

    # hide_input_in_errors: a ValidationError's text (a traceback, wherever Settings is made
    # outside load_settings) quoted the value, a REDIS_URL with its password, and for a
    # model-wide check every variable read, tokens and all (pydantic's `input_value=`).
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", populate_by_name=True,
                                      hide_input_in_errors=True,
                                      # "inf" and "nan" are floats to pydantic: an infinite
                                      # CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS crashed every
                                      # gunicorn worker (OverflowError), exit 3
                                      allow_inf_nan=False)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    jenkins_url: str = Field("", validation_alias=_env("JENKINS_URL"))
    # The URL agents connect to, when it differs from the API URL (e.g. an in-cluster service).
    jenkins_agent_url: str = Field("", validation_alias=_env("JENKINS_AGENT_URL"))
    # Jenkins' root URL as users open it (Manage Jenkins > System > Jenkins URL), when not
    # JENKINS_URL (an in-cluster API address): the running build's link (workers.engine.run_links).
    jenkins_public_url: str = Field("", validation_alias=_env("JENKINS_PUBLIC_URL"))
    jenkins_user: str = Field("", validation_alias=_env("JENKINS_USER"))
    jenkins_api_token: SecretStr | None = Field(None, validation_alias=_env("JENKINS_API_TOKEN"))
    # python-jenkins' own variable, which jenkins.Jenkins reads itself: one `Name: value` a
    # line. It drops a line without ':' without a word (python-jenkins 1.8.3, jenkins/
    # __init__.py: `if ":" in token`), so a proxy's credential written `Name=value` was never
    # sent and every Jenkins call got the proxy's refusal. Checked here by its lines' form;
    # its values (credentials) are never shown, nor kept in repr.
    jenkins_api_extra_headers: str = Field("", repr=False,
                                           validation_alias=_env("JENKINS_API_EXTRA_HEADERS"))
    gitlab_webhook_token: SecretStr | None = Field(
        None, validation_alias=_env("GITLAB_WEBHOOK_TOKEN"))
    jenkins_webhook_token: SecretStr | None = Field(
        None, validation_alias=_env("JENKINS_WEBHOOK_TOKEN"))
    # GitLab's signing token (whsec_...): when set, every GitLab delivery must carry a valid
    # webhook-signature, on top of X-Gitlab-Token, with a webhook-timestamp this close to our clock.
    gitlab_webhook_signing_token: SecretStr | None = Field(
        None, validation_alias=_env("GITLAB_WEBHOOK_SIGNING_TOKEN"))
    gitlab_webhook_max_skew_seconds: int = Field(
        WEBHOOK_MAX_SKEW_SECONDS, gt=0,
        validation_alias=_env("CI_AUTOSCALER_WEBHOOK_MAX_SKEW_SECONDS"))
    # GitLab's API, for the catch-up (workers.engine.catchup): off unless both are set. The token
    # needs read_api (and the Maintainer role to read a project's hooks).
    gitlab_url: str = Field("", validation_alias=_env("GITLAB_URL"))
    # The GitLab instance served, as it names itself (X-Gitlab-Instance; by host and port):
    # pushes from another are ignored (workers.core.gitlab_instance). "": any, with a warning.
    gitlab_instance: str = Field("", validation_alias=_env("CI_AUTOSCALER_GITLAB_INSTANCE"))
    gitlab_api_token: SecretStr | None = Field(None, validation_alias=_env("GITLAB_API_TOKEN"))
    # GitLab commit statuses (workers.commit_statuses): on when GITLAB_URL and
    # GITLAB_API_TOKEN are set, unless this says false; the token then needs the api scope.
    commit_status: bool = Field(True, validation_alias=_env("CI_AUTOSCALER_COMMIT_STATUS"))
    catch_up_interval_seconds: float = Field(
        CATCH_UP_INTERVAL_SECONDS, gt=0,
        validation_alias=_env("CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS"))
    # Sizing from each job's history (workers.job_history, workers.core.recommend).
    history_half_life_seconds: float = Field(
        DEFAULT_HALF_LIFE_SECONDS, gt=0,
        validation_alias=_env("CI_AUTOSCALER_HISTORY_HALF_LIFE_SECONDS"))
    history_min_builds: int = Field(
        DEFAULT_MIN_BUILDS, ge=1, validation_alias=_env("CI_AUTOSCALER_HISTORY_MIN_BUILDS"))
    history_memory_margin: float = Field(
        DEFAULT_MEMORY_MARGIN, ge=1, le=MAX_MEMORY_MARGIN,
        validation_alias=_env("CI_AUTOSCALER_HISTORY_MEMORY_MARGIN"))
    agent_namespace: str = Field("ci-agents", validation_alias=_env("AGENT_NAMESPACE"))
    # This installation's identity, for several sharing one Jenkins (staging and prod, two
    # teams): its Jenkins nodes carry it in their description and its agent names mix it in
    # (workers.core.keys), so one never deletes, adopts or reuses another's nodes. Empty:
    # the description and names of versions before it, for one installation per Jenkins.
    # The Helm chart sets "<release namespace>/<release name>".
    installation: str = Field("", validation_alias=_env("CI_AUTOSCALER_INSTALLATION"))
    kubeconfig: str | None = Field(None, validation_alias=_env("KUBECONFIG"))
    config_path: str | None = Field(None, validation_alias=_env("CI_AUTOSCALER_CONFIG"))
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=MIN_MAX_BODY_BYTES,
                                validation_alias=_env("CI_AUTOSCALER_MAX_BODY_BYTES"))
    # How long the web waits on Redis before it puts the event in its spool instead.
    redis_timeout_seconds: float = Field(
        2.0, gt=0, validation_alias=_env("CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS"))
    # Redis Sentinel (workers.adapters.redis_connect): when REDIS_SENTINELS lists host:port
    # pairs, every process asks them for the master named REDIS_SENTINEL_MASTER, and
    # REDIS_URL gives only the database, user and password (the host in it is not used).
    redis_sentinels: str = Field("", validation_alias=_env("REDIS_SENTINELS"))
    redis_sentinel_master: str = Field("", validation_alias=_env("REDIS_SENTINEL_MASTER"))
    # The sentinels' own password (`requirepass` in sentinel.conf), when they have one; or,
    # with REDIS_SENTINEL_USERNAME, that ACL user's (the chart's may only ask).
    redis_sentinel_username: str | None = Field(
        None, validation_alias=_env("REDIS_SENTINEL_USERNAME"))
    redis_sentinel_password: SecretStr | None = Field(
        None, validation_alias=_env("REDIS_SENTINEL_PASSWORD"))
    # A push is answered 202 from Redis only once this many replicas have it (WAIT, for up to
    # half the Redis timeout); otherwise it goes to the spool too (its delivery id dedupes the
    # copy). 0: no WAIT. With Sentinel, 1: a master that dies loses no answered push.
    redis_min_replicas: int = Field(0, ge=0,
                                    validation_alias=_env("CI_AUTOSCALER_REDIS_MIN_REPLICAS"))
    # The web's spool (workers.adapters.spool): where a push goes when Redis cannot take it,
    # on the pod's own volume; empty: a directory of this user's, installation's and Redis's
    # own in the temp dir (spool_path). Past either bound, a push that Redis cannot take
    # either is answered 503.
    spool_dir: str = Field("", validation_alias=_env("CI_AUTOSCALER_SPOOL_DIR"))
    spool_max_events: int = Field(SPOOL_MAX_EVENTS, gt=0,
                                  validation_alias=_env("CI_AUTOSCALER_SPOOL_MAX_EVENTS"))
    spool_max_bytes: int = Field(SPOOL_MAX_BYTES, gt=0,
                                 validation_alias=_env("CI_AUTOSCALER_SPOOL_MAX_BYTES"))
    # A delivery id (Idempotency-Key, X-Gitlab-Event-UUID, webhook-id) is a duplicate this long.
    dedupe_ttl_seconds: int = Field(DEDUPE_TTL_SECONDS, gt=0,
                                    validation_alias=_env("CI_AUTOSCALER_DEDUPE_TTL_SECONDS"))
    # A build's state (and its entries in the agents, queue items and builds indexes) is
    # deleted this long after the build ended, by the reconcile pass (workers.adapters.expiry).
    build_ttl_seconds: int = Field(BUILD_TTL_SECONDS, gt=0,
                                   validation_alias=_env("CI_AUTOSCALER_BUILD_TTL_SECONDS"))
    # Scale-up pods (workers.engine.scale_up): a Pending pause pod per build waiting for room, so a
    # cluster autoscaler adds nodes (it never does for work without a Pending pod). On by
    # default: without an autoscaler they only show, Pending, while builds wait.
    scale_up_pods: bool = Field(True, validation_alias=_env("CI_AUTOSCALER_SCALE_UP_PODS"))
    scale_up_image: str = Field(SCALE_UP_IMAGE, min_length=1,
                                validation_alias=_env("CI_AUTOSCALER_SCALE_UP_IMAGE"))
    scale_up_pods_max: int = Field(SCALE_UP_LIMIT, ge=1, le=1000,
                                   validation_alias=_env("CI_AUTOSCALER_SCALE_UP_PODS_MAX"))
    # The pod may go to the best this many nodes (required node affinity, ours preferred):
    # kube-scheduler has the last word among them (workers.core.placement.alternates).
    placement_candidates: int = Field(
        DEFAULT_CANDIDATES, ge=1, le=20,
        validation_alias=_env("CI_AUTOSCALER_PLACEMENT_CANDIDATES"))
    # free = allocatable - max(requests, usage / target) - in-flight
    target_utilisation: float = Field(0.8, gt=0, le=1,
                                      validation_alias=_env("CI_AUTOSCALER_TARGET_UTILISATION"))
    # The node shape `nodes_needed` counts in; default: the most common shape in the cluster.
    reference_node_cpu: str | None = Field(
        None, validation_alias=_env("CI_AUTOSCALER_REFERENCE_NODE_CPU"))
    reference_node_memory: str | None = Field(
        None, validation_alias=_env("CI_AUTOSCALER_REFERENCE_NODE_MEMORY"))
    metrics_interval_seconds: float = Field(
        15.0, gt=0, validation_alias=_env("CI_AUTOSCALER_METRICS_INTERVAL_SECONDS"))
    queue_name: str = Field("ci-autoscaler", validation_alias=_env("CI_AUTOSCALER_QUEUE"))
    key_prefix: str = Field("cia:", validation_alias=_env("CI_AUTOSCALER_KEY_PREFIX"))
    # A provision task holds its build's lease this long (renewed at each step); a build whose
    # provision stalled without it (a killed worker) is provisioned again by the reconcile loop.
    provision_lease_seconds: float = Field(
        60.0, gt=0, validation_alias=_env("CI_AUTOSCALER_PROVISION_LEASE_SECONDS"))
    # Jobs (provisions, releases) one worker process runs at once, each on a thread of its own
    # (workers.concurrency.pool_worker); 1 runs them one after another.
    provision_concurrency: int = Field(
        16, ge=1, le=256, validation_alias=_env("CI_AUTOSCALER_PROVISION_CONCURRENCY"))
    # The reconcile loop asks Jenkins about a triggered build it has heard nothing of for this
    # long (a lost COMPLETED notification).
    lost_event_seconds: float = Field(
        60.0, ge=0, validation_alias=_env("CI_AUTOSCALER_LOST_EVENT_SECONDS"))
    # A container waiting for one of these reasons fails its build at once (comma-separated;
    # see workers.core.start_failures), the pod and its Jenkins node deleted.
    fatal_waiting_reasons_text: str = Field(
        ",".join(DEFAULT_FATAL_WAITING_REASONS),
        validation_alias=_env("CI_AUTOSCALER_FATAL_WAITING_REASONS"))
    # An image pull failing for now (a registry's 429 or 5xx, a time-out) fails its build
    # this long after a watch first saw it fail; one failing for good, at once
    # (workers.core.image_pulls).
    image_pull_retry_seconds: float = Field(
        PULL_RETRY_SECONDS, ge=0, validation_alias=_env("CI_AUTOSCALER_IMAGE_PULL_RETRY_SECONDS"))
    # How long a worker or reconcile process gives the API server to list the cluster (the
    # watched snapshot's first sync) before it says it waits and tries again (service.cli):
    # a cluster of many thousands of pods, or a slow API server, may need more than the minute.
    snapshot_sync_seconds: float = Field(
        60.0, gt=0, validation_alias=_env("CI_AUTOSCALER_SNAPSHOT_SYNC_SECONDS"))
    # Where the web listens, as service/gunicorn.conf.py reads them: CI_AUTOSCALER_BIND, else
    # *:$PORT, else *:8080 (the webhooks' port, the public one); a host of "*" is every address
    # of the pod's IP families (workers.adapters.listen).
    bind: str | None = Field(None, validation_alias=_env("CI_AUTOSCALER_BIND"))
    port: str | None = Field(None, validation_alias=_env("PORT"))
    # gunicorn's worker processes of the web (service/gunicorn.conf.py reads the variable
    # itself); checked here so that `two` or `0` is refused naming it: gunicorn crashed on
    # `two` with a traceback as its config module loaded, and started no worker at all on `0`
    # (its arbiter spawns that many: every connection then waited for ever).
    web_concurrency: int = Field(2, ge=1, validation_alias=_env("WEB_CONCURRENCY"))
    # A second, internal port (host:port) for /metrics and /status, which the public port
    # then answers 404; unset: everything on the public port.
    admin_bind: str | None = Field(None, validation_alias=_env("CI_AUTOSCALER_ADMIN_BIND"))
    # Development only: lets the web app start without webhook tokens (and says so loudly).
    insecure_no_tokens: bool = Field(False, validation_alias=_env("CI_AUTOSCALER_INSECURE_NO_TOKENS"))

    @property
    def run_mark_ttl_seconds(self) -> int:
        """The TTL of a commit's run mark: a backstop, RUN_MARK_MIN_TTL_SECONDS at least."""
        return max(self.build_ttl_seconds, RUN_MARK_MIN_TTL_SECONDS)

    @property
    def push_replicas(self) -> int:
        """How many replicas must have a push before it is answered from Redis:
        CI_AUTOSCALER_REDIS_MIN_REPLICAS when set, else 1 with Sentinel (REDIS_SENTINELS) and
        0 without. Without the WAIT, a master SIGKILLed a moment after it answered (its replica
        lagging, or stalled) took the answered pushes with it: the promoted replica never had
        them, and GitLab sends no delivery twice. The chart set 1 itself; an operator running
        the Procfile with REDIS_SENTINELS, as the README's settings table reads ("1 with
        Sentinel"), got 0. Read by the web (service.app) and by the durability checks
        (workers.checks.redis_durability)."""
        if "redis_min_replicas" in self.model_fields_set:
            return self.redis_min_replicas
        return 1 if self.redis_sentinels.strip() else 0

    @property
    def fatal_waiting_reasons(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.fatal_waiting_reasons_text.split(",")
                         if r.strip())

    @field_validator("fatal_waiting_reasons_text")
    @classmethod
    def _waiting_reasons(cls, value: str) -> str:
        for reason in (r.strip() for r in value.split(",")):
            if reason and not _WAITING_REASON.fullmatch(reason):
                raise ValueError(f"{reason!r} is not a container waiting reason (a CamelCase "
                                 "word such as ImagePullBackOff); give them comma-separated")
        return value

    @field_validator("installation")
    @classmethod
    def _installation(cls, value: str) -> str:
        if value and not _INSTALLATION.fullmatch(value):
            raise ValueError(f"{value!r}: letters, digits, '.', '_', '-' and '/' (at most "
                             "200, beginning and ending with a letter or digit), e.g. "
                             "prod/ci-autoscaler")
        return value

    @property
    def redis_fingerprint(self) -> str:
        """12 hex of where this installation's data is in Redis (the address, or with Sentinel
        the master's name; the database; the key prefix), never its user or password: two
        installations that drain into different intakes have different fingerprints. Not the
        list of sentinels: adding or replacing one, routine and likeliest during the very
        outage that fills the spool, leaves the master (and its intake) where it was, and its
        rows would have become another owner's, never drained. (The fingerprint with the
        sentinel list was never released: no row of it to carry over; `ci-autoscaler spool
        adopt` takes any.)"""
        target = f"{self.redis_target} {self.key_prefix}"
        return hashlib.sha256(target.encode()).hexdigest()[:12]

    @property
    def redis_target(self) -> str:
        """Where the service's Redis is, for people and the fingerprint: host:port/db, the
        unix socket, or the Sentinel master's name; never a user or password."""
        url = parse_url(self.redis_url)
        if self.sentinels:
            where = "sentinel:" + self.redis_sentinel_master
        elif "path" in url:
            where = "unix:" + url["path"]
        else:
            where = f"{url.get('host') or 'localhost'}:{url.get('port') or 6379}"
        return f"{where}/{url.get('db') or 0}"

    @property
    def spool_owner(self) -> str:
        """Whose a spooled push is (workers.adapters.spool): the installation that took it and
        the Redis it goes to; a drainer moves only its own owner's rows."""
        return f"{self.installation or '-'} redis:{self.redis_fingerprint}"

    @property
    def spool_path(self) -> str:
        """CI_AUTOSCALER_SPOOL_DIR, or a directory of this user's, installation's and Redis's
        own in the temp dir: two installations on one host (staging and prod, `make run` and
        `make demo`) never share one, so neither drains the other's pushes."""
        return self.spool_dir or default_spool_path(self)

    @property
    def spool_is_default(self) -> bool:
        return not self.spool_dir

    @property
    def redis_named(self) -> bool:
        """Whether the environment names a Redis (REDIS_URL or REDIS_SENTINELS) rather than
        leaving the default, 127.0.0.1:6379, which is then no Redis of the service's on an
        operator's machine (check-config --live before the chart's Redis exists)."""
        return "redis_url" in self.model_fields_set or bool(self.redis_sentinels)

    @property
    def sentinels(self) -> tuple[tuple[str, int], ...]:
        return tuple(_host_port(item) for item in self.redis_sentinels.split(",")
                     if item.strip())

    def redis_client(self, **options: Any):
        """A client for the service's Redis, through the sentinels when REDIS_SENTINELS is set
        (workers.adapters.redis_connect); `options` are redis.Redis's."""
        password = self.redis_sentinel_password
        return redis_connect.connect(
            url=self.redis_url, sentinels=self.sentinels, master=self.redis_sentinel_master,
            sentinel_username=self.redis_sentinel_username,
            sentinel_password=password.get_secret_value() if password else None, **options)

    @field_validator("jenkins_api_token", "gitlab_webhook_token", "jenkins_webhook_token",
                     "gitlab_webhook_signing_token", "gitlab_api_token", mode="before")
    @classmethod
    def _token_without_its_files_newline(cls, value: Any) -> Any:
        # A token from a file keeps the file's final newline (`kubectl create secret generic
        # --from-file`, the chart's existingSecret); no token has white space at either end,
        # and with it every comparison (X-Gitlab-Token) and every API call failed with 401.
        # Passwords are left as given: white space may be part of one.
        return value.strip() if isinstance(value, str) else value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _url_without_its_files_newline(cls, value: Any) -> Any:
        # The chart's redis.external.existingSecret holds the URL, as often made --from-file.
        return value.strip() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        # What redis-py would refuse as each process connects (a ValueError traceback then),
        # refused here, by name. Never with the value or redis-py's message, which may quote
        # part of it: an unencoded "/" in the password makes the rest of it the port.
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix:// "
                             "(redis://[[user]:password@]host[:port][/db])")
        try:
            parsed = parse_url(value)
        except ValueError:
            raise ValueError("cannot be read as a Redis URL (redis://[[user]:password@]host"
                             "[:port][/db]); percent-encode / : @ # ? in a password") from None
        # redis-py takes a path that is no number ("/1x", "/ci", "/l" for "/1") as no database
        # at all (parse_url: int() in try/except ValueError: pass), and every process used
        # database 0, beside whatever else keeps its keys there. A database is SELECT's index.
        # As redis-py reads it: a query's ?db= first (the path is then not read), and what
        # int() takes ("+1"; not "\u00b2", a digit to str.isdigit()).
        if parsed.get("db", 0) < 0 or not value.startswith("unix://") and "db" not in parsed \
                and unquote(urlsplit(value).path).replace("/", ""):
            raise ValueError("the database after host[:port]/ must be a number, such as "
                             "/0 (redis://[[user]:password@]host[:port][/db])")
        return value

    @field_validator(*HTTP_URL_FIELDS)
    @classmethod
    def _url_without_credentials(cls, value: str, info: ValidationInfo) -> str:
        # A user:token@ in one of these went where the URL goes: JENKINS_AGENT_URL (else
        # JENKINS_URL) into every agent pod's env, as a plain value any build reads and anyone
        # reading pods sees (core.pods), and the URL into python-jenkins' and requests' error
        # texts. The credentials have settings of their own. Never the value in the message.
        if URL_USERINFO.search(value):
            name = cls.model_fields[info.field_name].validation_alias.choices[0]
            raise ValueError(f"{name} must carry no user:password@ ({_NO_USERINFO[name]})")
        return value

    @field_validator(*HTTP_URL_FIELDS, mode="before")
    @classmethod
    def _http_url_without_its_files_newline(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator(*HTTP_URL_FIELDS)
    @classmethod
    def _http_url(cls, value: str) -> str:
        # The chart's schema takes only http(s) URLs here (`^(|https?://.+)$`); set by hand,
        # `jenkins:8080` was taken and every call to Jenkins raised a TypeError in requests
        # (a process running, each build's provision failing with a traceback, and
        # check-config --live a traceback). Never with the value: it may hold a user:password.
        if value and not _http_url(value):
            raise ValueError("must be an http:// or https:// URL with a host "
                             "(e.g. https://ci.example.com or http://jenkins:8080/jenkins)")
        return value

    @field_validator("gitlab_url")
    @classmethod
    def _gitlab_root(cls, value: str) -> str:
        # python-gitlab adds /api/v4 itself (gitlab.Gitlab: url + "/api/v4"): GitLab CI's
        # CI_API_V4_URL given here made every call /api/v4/api/v4/..., answered 404 (a
        # project's status, each catch-up pass's every project "not found").
        if re.search(r"/api/v\d+/*$", urlsplit(value).path):
            raise ValueError("must be GitLab's root URL (https://gitlab.example.com, or the "
                             "path GitLab is served under), without /api/v4: python-gitlab "
                             "adds it")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        # user:password@, or the form of REDIS_URL: nothing of it quoted, whichever item holds
        # the @ (a comma in the password made the item before it "user:<password's start>")
        if "@" in value:
            raise ValueError("a sentinel is given with credentials (...@host): give each "
                             "as host:port, comma-separated; their password goes in "
                             "REDIS_SENTINEL_PASSWORD")
        for item in (i.strip() for i in value.split(",")):
            if item and _host_port(item) is None:
                raise ValueError(f"{item!r} is not host:port (a port from 1 to 65535); give "
                                 "the sentinels comma-separated")
        return value

    @model_validator(mode="after")
    def _sentinel_master(self) -> "Settings":
        if self.redis_sentinels.strip() and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS (the name "
                             "the sentinels monitor)")
        # Without a password redis-py logs in as `default` and the user is silently unused
        # (redis_connect); a name with white space can be no `user` line of sentinel.conf.
        # The messages name the setting, never its value.
        user = self.redis_sentinel_username
        if user and not self.redis_sentinel_password:
            raise ValueError("REDIS_SENTINEL_USERNAME: requires REDIS_SENTINEL_PASSWORD (that "
                             "sentinel ACL user's password)")
        if user and any(c.isspace() for c in user):
            raise ValueError("REDIS_SENTINEL_USERNAME: a sentinel ACL user name has no white "
                             "space")
        return self

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every SecretStr setting's value, to blank out of a text shown (the status page, a
        GitLab commit status). Not REDIS_URL's password: a URL's user:password@ is redacted as
        a URL (core.redaction), and a short one blanked everywhere took words out of texts.
        A secret of non-ASCII characters comes also as a WSGI server's text holds what was sent
        (PEP 3333: its UTF-8 bytes read as latin-1; a path's, a header's): the 404 of a hook
        URL with the token in its path logged it so, where its own form matched nothing.
        And the credentials as they are sent (workers.config.sent_credentials: Jenkins' Basic
        header, JENKINS_API_EXTRA_HEADERS' values), which a page repeating a request quotes,
        and each percent-encoded as a URL carries it (a token in a hook's path: RAW_URI)."""
        values = [v.get_secret_value() for v in (getattr(self, name)
                                                 for name in type(self).model_fields)
                  if isinstance(v, SecretStr) and v.get_secret_value()]
        token = self.jenkins_api_token.get_secret_value() if self.jenkins_api_token else ""
        values += sent_forms(jenkins_user=self.jenkins_user, jenkins_token=token,
                             extra_headers=self.jenkins_api_extra_headers)
        sent = [v.encode("utf-8", "surrogateescape").decode("latin-1") for v in values]
        sent += (form for v in values for form in url_forms(v))
        return tuple(dict.fromkeys((*values, *sent)))

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        # The SecretStr settings show as '**********'; REDIS_URL's password likewise.
        for name, value in super().__repr_args__():
            yield name, (URL_USERINFO.sub("**********@", value)
                         if name == "redis_url" and isinstance(value, str) else value)

    @property
    def catch_up_enabled(self) -> bool:
        return bool(self.gitlab_url and self.gitlab_api_token
                    and self.gitlab_api_token.get_secret_value())

    @property
    def commit_status_enabled(self) -> bool:
        return self.commit_status and self.catch_up_enabled

    @property
    def agent_jenkins_url(self) -> str:
        return self.jenkins_agent_url or self.jenkins_url

    @property
    def public_bind(self) -> str:
        return self.bind or f"*:{self.port or 8080}"

    @property
    def admin_port(self) -> int | None:
        """The admin bind's port, or None when /metrics and /status share the public port."""
        return None if not self.admin_bind else bind_port(self.admin_bind)

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str | None) -> str | None:
        # gunicorn reads a bind without ':' as a host on its port 8000 (gunicorn.util.
        # parse_address): "8080" was looked up as a host, "0.0.0.0" listened on 8000. Its
        # other forms are taken as written: unix:PATH, and fd://N, a socket a supervisor
        # passed open (systemd's socket activation, circus, einhorn).
        if value and not value.startswith("unix:") and not _descriptor(value) \
                and bind_port(value) is None:
            raise ValueError(f"{value!r} is not host:port (a port from 1 to 65535), e.g. "
                             "*:8080 (every address), or unix:PATH, or fd://N")
        return value or None

    @field_validator("jenkins_api_extra_headers")
    @classmethod
    def _extra_headers(cls, value: str) -> str:
        bad = [str(number) for number, line in enumerate(value.split("\n"), 1)
               if line.strip() and not _HEADER_LINE.fullmatch(line.rstrip("\r"))]
        if bad:
            raise ValueError(f"line {', '.join(bad)} is not `Name: value` (an HTTP header's "
                             "name, a colon, its value; one header a line): python-jenkins "
                             "drops such a line unsent, or requests refuses every call")
        return value

    @field_validator("web_concurrency", mode="before")
    @classmethod
    def _web_concurrency(cls, value: Any) -> Any:
        """Digits alone, white space around them allowed: what gunicorn's config reads
        (service/gunicorn.conf.py). "4.0", "+4" and "4_0", ints to pydantic, ran gunicorn's
        default 2 workers without a word."""
        if isinstance(value, str) and value.strip():
            if not value.strip().isdigit():
                raise ValueError("a whole number of worker processes (digits only), at least 1")
            return value.strip()
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: str | None) -> str | None:
        if value and bind_port(f"0.0.0.0:{value}") is None:
            raise ValueError(f"{value!r} is not a port (1 to 65535)")
        return value or None

    @field_validator("admin_bind")
    @classmethod
    def _admin_bind(cls, value: str | None) -> str | None:
        if value and bind_port(value) is None:
            raise ValueError(f"{value!r} is not host:port (a port from 1 to 65535)")
        return value or None

    @model_validator(mode="after")
    def _admin_port_of_its_own(self) -> "Settings":
        if self.admin_bind and self.bind and _descriptor(self.bind):
            # gunicorn.sock.create_sockets: with any fd:// bind it listens on the descriptors
            # alone, and every other bind is dropped without a word.
            raise ValueError(f"CI_AUTOSCALER_ADMIN_BIND: gunicorn serves only the descriptor "
                             f"of CI_AUTOSCALER_BIND ({self.bind}) and would never listen on "
                             f"{self.admin_bind}; unset one of them")
        if self.admin_bind and bind_port(self.admin_bind) == bind_port(self.public_bind):
            raise ValueError(f"CI_AUTOSCALER_ADMIN_BIND: {self.admin_bind} has the port of the "
                             f"webhooks ({self.public_bind}); the admin port needs one of its own")
        return self

    @model_validator(mode="after")
    def _spool_holds_a_push(self) -> "Settings":
        """The spool takes no push larger than its bound (workers.adapters.spool), and one read
        whole is up to max_body_bytes: a bound below it (256, meant as MiB) answered every push
        503 while Redis was away, the spool "full" with nothing in it."""
        if self.spool_max_bytes < self.max_body_bytes:
            raise ValueError(f"CI_AUTOSCALER_SPOOL_MAX_BYTES: {self.spool_max_bytes} is below "
                             f"CI_AUTOSCALER_MAX_BODY_BYTES ({self.max_body_bytes}): the spool "
                             "could not keep a push read whole while Redis is away")
        return self

    @model_validator(mode="after")
    def _reference_shape(self) -> "Settings":
        if (self.reference_node_cpu is None) != (self.reference_node_memory is None):
            raise ValueError("CI_AUTOSCALER_REFERENCE_NODE_CPU and _MEMORY go together")
        # each by name, and more than nothing: a quantity's error named no variable, and a
        # node of 0 CPU was taken as the shape every node needed was counted in
        for name, value, read in (("CPU", self.reference_node_cpu, cpu_millis),
                                  ("MEMORY", self.reference_node_memory, memory_bytes)):
            if value is not None:
                try:
                    amount = read(value)
                except ValueError as err:
                    raise ValueError(f"CI_AUTOSCALER_REFERENCE_NODE_{name}: {err}") from None
                if amount <= 0:
                    raise ValueError(f"CI_AUTOSCALER_REFERENCE_NODE_{name}: must be more "
                                     f"than 0, not {value!r}")
        return self

    @property
    def reference_node(self) -> Resources | None:
        if self.reference_node_cpu is None or self.reference_node_memory is None:
            return None
        return Resources(cpu_millis(self.reference_node_cpu),
                         memory_bytes(self.reference_node_memory))


def _http_url(value: str) -> bool:
    """An http or https URL with a host, whose port (if any) is a port."""
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname) \
            and (parts.port is None or 0 < parts.port)
    except ValueError:  # a port that is no number, or out of range
        return False


def _host_port(item: str) -> tuple[str, int] | None:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def bind_port(bind: str) -> int | None:
    """The port of a gunicorn TCP bind ("0.0.0.0:9090", "[::]:9090", "localhost:9090"), or
    None when it names none."""
    _, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return int(port)


def _descriptor(bind: str) -> bool:
    """A gunicorn bind of an open socket's file descriptor: fd://N."""
    return bind.startswith("fd://") and bind[5:].isdecimal()


def known_variables() -> set[str]:
    """Every environment variable Settings reads."""
    return {str(name) for field in Settings.model_fields.values()
            for name in getattr(field.validation_alias, "choices", ())}


def load_settings(*, warn_unknown: bool = True, **overrides: Any) -> Settings:
    """The Settings, or ConfigError; CI_AUTOSCALER_* variables no setting reads are logged,
    unless `warn_unknown` is false (a process whose next one, exec'd or started, logs them)."""
    if warn_unknown:
        unknown_variables.warn(known_variables())
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        raise ConfigError([": ".join(filter(None, (".".join(map(str, e["loc"])),
                                                   e["msg"].removeprefix("Value error, "))))
                           for e in err.errors()]) from None
    # Every log line of the process from now on is without them, whatever an error quotes
    logs.hide_secrets(settings.secret_values)
    return settings
