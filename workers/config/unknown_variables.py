"""CI_AUTOSCALER_* variables that no part of ci-autoscaler reads: a mistyped name
(CI_AUTOSCALER_TARGETUTILISATION) was ignored without a word, the process running on the
default the operator meant to change. Each is logged once per process, by name (never its
value), with the setting it is closest to. Logged, not refused: an operator's own variables of
that prefix given to every container (the chart's extraEnv) must not stop the service."""

import difflib
import logging
import os
import re
from collections.abc import Iterable, Mapping

PREFIX = "CI_AUTOSCALER_"
# Read outside workers.config.settings: the liveness file (workers.telemetry.liveness), the
# web's metrics directory and config copy (service.startup), the tests' webhook fixtures; and
# the parameters every build gets, in the environment of a Jenkins build that runs
# `ci-autoscaler check-config` (a config repository's pipeline on one of our agents).
READ_ELSEWHERE = frozenset({"CI_AUTOSCALER_LIVENESS_FILE", "CI_AUTOSCALER_METRICS_DIR_MADE",
                            "CI_AUTOSCALER_CONFIG_SNAPSHOT", "CI_AUTOSCALER_FIXTURES",
                            "CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY",
                            "CI_AUTOSCALER_CPU", "CI_AUTOSCALER_MEMORY"})
# Set by Kubernetes in every container, for each Service of the namespace with a cluster IP
# (kubelet, pkg/kubelet/envvars/envvars.go FromServices: the Service's name upper-cased with '-'
# made '_', then _SERVICE_HOST, _SERVICE_PORT, _SERVICE_PORT_<port name>, _PORT,
# _PORT_<port>_<PROTO> and its _PROTO, _PORT, _ADDR), unless a pod sets enableServiceLinks:
# false. Installed as the README says (`helm install ci-autoscaler`), the chart's Services are
# ci-autoscaler, ci-autoscaler-redis, ci-autoscaler-jenkins: every process of every pod named
# CI_AUTOSCALER_PORT, CI_AUTOSCALER_REDIS_SERVICE_HOST... as a mistake of the operator's.
_SERVICE_LINK = re.compile(r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
                           r"|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)")
log = logging.getLogger("ci_autoscaler.settings")
_told: set[str] = set()


def unknown(known: Iterable[str], environ: Mapping[str, str]) -> dict[str, str | None]:
    """Each CI_AUTOSCALER_* name of `environ` not in `known`, with the known name closest to
    it (None when none is close)."""
    names = {n.upper() for n in known} | READ_ELSEWHERE
    settings = {n.upper() for n in known} | {"CI_AUTOSCALER_LIVENESS_FILE"}
    return {name: _closest(name.upper(), settings)
            for name in sorted(environ) if name.upper().startswith(PREFIX)
            and name.upper() not in names and not _SERVICE_LINK.fullmatch(name.upper())}


def _closest(name: str, settings: set[str]) -> str | None:
    """The setting an operator most likely meant, compared past the prefix (every name has it:
    whole, CI_AUTOSCALER_CPUS came out as CI_AUTOSCALER_QUEUE); only a name an operator sets
    ("did you mean CI_AUTOSCALER_CPU?", a build's parameter, led to one every process
    ignores)."""
    tails = {n.removeprefix(PREFIX): n for n in settings if n.startswith(PREFIX)}
    close = difflib.get_close_matches(name.removeprefix(PREFIX), tails, n=1, cutoff=0.8)
    return tails[close[0]] if close else None


def warn(known: Iterable[str], environ: Mapping[str, str] = os.environ) -> None:
    """Log each unknown name once in this process."""
    for name, close in unknown(known, environ).items():
        if name in _told:
            continue
        _told.add(name)
        hint = f" (did you mean {close}?)" if close else ""
        log.warning(f"{name} is no setting of ci-autoscaler: ignored{hint}",
                    extra={"variable": name, "closest": close})
