"""GET /status: every build's way in sight for people without Grafana, rendered on the server
(Jinja, no JavaScript) and refreshing itself: builds in flight (one whose image pull the
kubelet retries with the error and since when), builds waiting with their
reasons in arrival order, each node's free CPU and memory, nodes_needed and the shortfall,
the warm agents of each template with a pool, and the last failures with their reasons.

Read-only, from what /metrics reads already (the capacity state, the reconcile leader's passes,
the waiting set, the live agents and their build records, the intake and the queue) plus the
``failures`` set and the last failed pass's error. No
secret can show: every value the templates print has the settings' secrets blanked out as it is
printed (Jinja's finalize, before autoescape, so a secret holding '&' or '<' is found too), and
a text the page cuts short is blanked before the cut. The data is blanked, never the template's
own text: blanking the whole page, a short token ("a", "td") made "<td>" "<[hidden]>", a page no
browser reads.
"""

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from flask import Blueprint, Response, render_template
from jinja2 import pass_context
from jinja2.runtime import Context

from service.app import WebContext, context
from workers.adapters.metric_store import counter_values
from workers.adapters import refused_builds, unserved_store
from workers.adapters.pass_store import CATCH_UP, RECONCILE, Passes, PassStore
from workers.adapters.redis_state import AGENT_PHASE_OF, BuildStatus
from workers.adapters.warm_store import WarmStore
from workers.core.commit_status import redact
from workers.core.redaction import URL_USERINFO
from workers.core.errors import RetryableError
from workers.core.image_pulls import PULL_AGENT_FIELD, PULL_ERROR_FIELD, PULL_SINCE_FIELD
from workers.core.stages import FIELD, current
from workers.core.waiting_text import JENKINS_WAIT_FIELD, meaning, waiting_text
from workers.telemetry.metrics import WARM_HITS_TOTAL

bp = Blueprint("status", __name__, template_folder="templates")
log = logging.getLogger("ci_autoscaler.status")


@pass_context
def _scrubbed(context: Context, value: object) -> object:
    """Jinja's finalize: each value a template prints, before it is escaped, with the secrets
    blanked when the template was given the `scrub` (every page here is), as text."""
    scrub = context.get("scrub")
    return value if scrub is None else scrub(str(value))


@bp.record_once
def _finalize(state) -> None:
    # At registration, before any template is compiled: Jinja compiles finalize in.
    state.app.jinja_env.finalize = _scrubbed

STATUS_REFRESH_SECONDS = 10
FAILURES_SHOWN = 20
WAITING_SHOWN = 200  # rows; the heading counts them all
IN_FLIGHT_SHOWN = 500  # rows, oldest first; the heading counts them all
ERROR_SHOWN_CHARS = 300
HIDDEN = "[hidden]"
# build fields the page shows cut to ERROR_SHOWN_CHARS: the pull error the kubelet retries
# (workers.agent_starts.pulls) as well, the one place anyone but the worker's log sees it
# (GitLab keeps the build's first pending status)
_CUT = frozenset({"error", PULL_ERROR_FIELD, JENKINS_WAIT_FIELD})
_FIELDS = ("project", "ref", "job", "template", "status", "node", "cpu_millis", "memory_bytes",
           "size_source", "size_moved", "wait_reason", "wait_detail", "fail_reason", "error", "parked_at",
           JENKINS_WAIT_FIELD,
           PULL_ERROR_FIELD, PULL_SINCE_FIELD, PULL_AGENT_FIELD, "agent", *FIELD.values())


@dataclass(frozen=True)
class Build:
    record: dict[str, str]
    since: float | None = None  # a failed build's: when it failed

    def get(self, name: str) -> str:
        return self.record.get(name) or ""

    def number(self, name: str) -> float | None:
        try:
            return float(self.record[name])
        except (KeyError, ValueError):
            return None

    @property
    def pull_error(self) -> str:
        """The error of its pod's image pull the kubelet retries now: "" for one of a pod
        it had before (placed again, its new pod's pull not yet seen failing)."""
        own = self.get(PULL_AGENT_FIELD) == self.get("agent")
        return self.get(PULL_ERROR_FIELD) if own else ""

    @property
    def stage(self) -> str:
        step = current(self.record)
        return step.stage.value if step else ""

    @property
    def stage_since(self) -> float | None:
        step = current(self.record)
        return step.at if step else None


@dataclass(frozen=True)
class WarmPool:
    """One template's warm agents (workers.warm): its limits, its agents by state, the
    longest an idle one has waited, and its builds that took one or went the normal way."""

    template: str
    minimum: int
    maximum: int
    states: dict[str, int]
    oldest_idle_since: float | None
    hits: int
    misses: int


def read_warm(ctx: WebContext) -> list[WarmPool]:
    pools = {n: t.warm for n, t in sorted(ctx.config.templates.items()) if t.warm is not None}
    if not pools:
        return []
    agents = WarmStore(ctx.state.redis, prefix=ctx.state.prefix).all_agents(pools)
    counted = counter_values(ctx.metrics.store.read([WARM_HITS_TOTAL.name])[WARM_HITS_TOTAL.name])
    out = []
    for name, warm in pools.items():
        states = {state: 0 for state in ("starting", "idle", "claimed")}
        for agent in agents[name]:
            states[str(agent.state)] += 1
        idle = [a.since for a in agents[name] if str(a.state) == "idle"]
        out.append(WarmPool(name, warm.min, warm.max, states, min(idle, default=None),
                            int(counted.get((name, "hit"), 0)),
                            int(counted.get((name, "miss"), 0))))
    return out


@dataclass(frozen=True)
class Page:
    now: float
    capacity: dict[str, str]
    nodes: dict[str, dict]
    in_flight: list[Build]
    in_flight_total: int
    waiting: list[Build]
    waiting_total: int
    failures: list[Build]
    intake_waiting: int
    queued_jobs: int
    warm: list[WarmPool]
    passes: Passes
    # the catch-up's passes (workers.engine.catchup): none recorded without the catch-up
    catch_up: Passes = Passes(last_ok_at=None, failing_since=None)
    # Jenkins queue items no template serves (a label expression naming one of our labels),
    # as the last reconcile pass found them (workers.engine.unserved), oldest first
    unserved: list[dict] = dataclasses.field(default_factory=list)

    @property
    def reasons(self) -> dict[str, int]:
        """Builds waiting by reason, as the last decision or reconcile pass counted them."""
        counted = json.loads(self.capacity.get("reasons") or "{}")
        return {str(reason): int(count) for reason, count in counted.items()}

    @property
    def nodes_needed(self) -> int:
        return int(float(self.capacity.get("nodes_needed") or 0))

    def figure(self, name: str) -> float:
        return float(self.capacity.get(name) or 0)

    @property
    def state_age(self) -> float | None:
        updated = self.capacity.get("updated_at")
        return None if not updated else max(0.0, self.now - float(updated))

    def wait_text(self, build: Build) -> str:
        return waiting_text(build.get("wait_reason"), build.get("wait_detail"),
                            nodes_needed=self.nodes_needed,
                            too_big=self.too_big.get(build.get("build_key"), ""))

    @functools.cached_property
    def too_big(self) -> dict[str, str]:
        """Why each build bigger than a reference node waits, by build key, as the last
        decision or reconcile pass found them (workers.engine.scheduling.refresh_capacity)."""
        try:
            found = json.loads(self.capacity.get("too_big") or "{}")
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    @staticmethod
    def wait_meaning(build: Build) -> str:
        return meaning(build.get("wait_reason"))


class Scrub:
    """Blanks the settings' secrets out of any text (webhook tokens, the signing token, and
    whatever other secret this process was given, such as a Jenkins API token), and a URL's
    user:password@ (core.redaction): a wait_detail quoting a Jenkins or proxy URL given with
    one showed the password, which no setting names (REDIS_URL's is not a secret value)."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, HIDDEN)
        return URL_USERINFO.sub("[redacted]@", text)  # as core.redaction words it


def secrets_of(ctx: WebContext) -> Scrub:
    return Scrub(ctx.settings.secret_values)


def _records(ctx: WebContext, keys: list[str], scrub: Scrub) -> list[dict[str, str]]:
    """The builds' fields as stored, but a text the page cuts short (a cut could leave part
    of a secret, which no later blanking knows), blanked here: the others are blanked as they
    are printed (_scrubbed), and read as they are (a status, a number) until then. A cut
    text loses a URL's user:password@ and token-like words too (commit_status.redact): a
    registry's or a proxy's message may quote a URL as it was given."""
    rows = ctx.state.build_fields(keys, *_FIELDS) if keys else []
    return [{name: redact(scrub(value)) if name in _CUT else value
             for name, value in zip(_FIELDS, row) if value is not None} for row in rows]


def read_in_flight(ctx: WebContext, scrub: Scrub) -> tuple[list[Build], int]:
    """The first IN_FLIGHT_SHOWN builds in flight, oldest first, and how many there are. Only
    the shown rows' records are read: with thousands of live builds, every page load read each
    one's record under the web's Redis user to keep 500. Live builds not in flight (retained,
    or ended since the keys were read) are skipped, and as many more read in their place."""
    try:
        total, ordered = ctx.state.live_in_arrival_order()
    except redis.exceptions.NoPermissionError:
        return _every_in_flight(ctx, scrub)
    shown: list[Build] = []
    start = 0
    while len(shown) < IN_FLIGHT_SHOWN and start < len(ordered):
        keys = ordered[start:start + IN_FLIGHT_SHOWN - len(shown)]
        start += len(keys)
        shown += [Build(r) for r in _records(ctx, keys, scrub)
                  if AGENT_PHASE_OF.get(r.get("status", "")) not in (None, "retained")]
    return _with_refused(ctx, scrub, shown, max(total, len(shown)))


def _with_refused(ctx: WebContext, scrub: Scrub, shown: list[Build],
                  total: int) -> tuple[list[Build], int]:
    """The in-flight rows and the builds still queued because Jenkins refuses us or does not
    answer (workers.adapters.refused_builds), in arrival order: they have no agent, so live-agents never
    listed them."""
    keys = refused_builds.recent(ctx.state, time.time())
    refused = [Build(r) for r in _records(ctx, keys, scrub) if _refused(r)]
    rows = sorted(shown + refused, key=lambda b: b.number("received_at") or 0)
    return rows, total + len(refused)


def _refused(record: dict[str, str]) -> bool:
    return record.get("status") == BuildStatus.QUEUED and bool(record.get(JENKINS_WAIT_FIELD))


def _every_in_flight(ctx: WebContext, scrub: Scrub) -> tuple[list[Build], int]:
    """read_in_flight for a web user not given SCARD and ZINTER (an external Redis's, made
    from an older README line): every live build's record read, as before, not a 503."""
    log.warning("the web's Redis user may not SCARD or ZINTER: /status reads every live "
                "build (README, \"Redis users\")")
    every = [Build(r) for r in _records(ctx, ctx.state.live_build_keys(), scrub)
             if AGENT_PHASE_OF.get(r.get("status", "")) not in (None, "retained")]
    every.sort(key=lambda b: b.number("received_at") or 0)
    return _with_refused(ctx, scrub, every[:IN_FLIGHT_SHOWN], len(every))


def read_page(ctx: WebContext, scrub: Scrub, now: float) -> Page:
    capacity, nodes = ctx.capacity.read_state()
    # only the rows shown: with thousands waiting, every load read every waiting key
    waiting_total, shown_waiting = ctx.capacity.waiting_first(WAITING_SHOWN)
    failed = ctx.state.recent_failures(FAILURES_SHOWN)
    intake_waiting, _ = ctx.state.intake.counts()
    records = _records(ctx, shown_waiting + [k for k, _ in failed], scrub)
    # each with its key: the capacity state names the builds bigger than a reference node
    waiting = [Build({**r, "build_key": key}) for r, key in zip(records, shown_waiting)]
    in_flight, in_flight_total = read_in_flight(ctx, scrub)
    failures = [Build(r, since=t) for r, (_, t) in zip(records[len(shown_waiting):], failed)
                if r.get("status") == BuildStatus.FAILED]
    return Page(now=now, capacity=capacity,
                nodes=dict(sorted(nodes.items())),
                in_flight=in_flight, in_flight_total=in_flight_total, waiting=waiting,
                waiting_total=waiting_total, failures=failures,
                intake_waiting=intake_waiting, queued_jobs=ctx.state.queue.count,
                warm=read_warm(ctx), passes=read_passes(ctx, scrub),
                catch_up=read_passes(ctx, scrub, name=CATCH_UP),
                unserved=[{"id": i, **v} for i, v in sorted(unserved_store.read(ctx.state)
                                                            .items())])


def read_passes(ctx: WebContext, scrub: Scrub, name: str = RECONCILE) -> Passes:
    """The reconcile leader's passes (or the catch-up's: CATCH_UP); the last failure's error
    as shown, scrubbed anyway."""
    passes = PassStore(ctx.state.redis, prefix=ctx.state.prefix, name=name).read()
    return dataclasses.replace(passes, error=scrub(passes.error)[:ERROR_SHOWN_CHARS])


@bp.get("/status")
def status():
    ctx = context()
    scrub = secrets_of(ctx)
    try:
        page = read_page(ctx, scrub, time.time())
    except (redis.RedisError, RetryableError):
        html, code = render_template("status_unavailable.html", scrub=scrub,
                                     refresh=STATUS_REFRESH_SECONDS), 503
    else:
        html, code = render_template("status.html", page=page, scrub=scrub,
                                     refresh=STATUS_REFRESH_SECONDS,
                                     error_chars=ERROR_SHOWN_CHARS), 200
    response = Response(html, status=code, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_filter("cores")
def cores(millis: float | int | str | None) -> str:
    return "—" if millis in (None, "") else f"{float(millis) / 1000:.2f}".rstrip("0").rstrip(".")


@bp.app_template_filter("gib")
def gib(nbytes: float | int | str | None) -> str:
    return "—" if nbytes in (None, "") else f"{float(nbytes) / 2**30:.2f} GiB"


@bp.app_template_filter("utc")
def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


@bp.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    """E.g. 42s, 3m 05s, 2h 04m; — when unknown."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
