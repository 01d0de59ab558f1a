"""Giving way in a ResourceQuota (issue 22, builds always win): a build that the agent
namespace's quota refused waits beside idle warm agents that count against that same quota, so
the agents whose going lets the quota admit it are given up, oldest first. Pure.

What a build lacks is what its refusal named (core.quota_usage.Exceeded: the pod's ask, the
quota's use then, its hard limit), kept on its record as `quota_exceeded` (`dump`/`load`). An
agent counts its pod's requests, `pods` and `count/pods` (pkg/quota/v1/evaluator/core/pods.go
podComputeUsageHelper); its limits are not known here, so a quota on limits.* is answered by
no agent (a build waiting on one waits for a build to end, as before).
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from workers.core.cluster import Resources
from workers.core.quota_usage import Exceeded, room_if_gone
from workers.core.warm_pool import IdleAgent


@dataclass(frozen=True)
class QuotaNeed:
    """A build waiting on a full quota as giving way sees it: what its refusal lacked."""

    exceeded: tuple[Exceeded, ...]


def dump(exceeded: Iterable[Exceeded] | None) -> str | None:
    """The refusal's exceeded resources for the build's record; None when unknown."""
    rows = [[e.quota, e.resource, str(e.asked), str(e.used), str(e.hard)]
            for e in exceeded or ()]
    return json.dumps(rows) if rows else None


def load(text: str | None) -> tuple[Exceeded, ...]:
    """`dump`'s text back; () when absent or unreadable (no agent gives way to it)."""
    try:
        return tuple(Exceeded(str(q), str(r), Decimal(a), Decimal(u), Decimal(h))
                     for q, r, a, u, h in json.loads(text or "[]"))
    except (ValueError, TypeError, InvalidOperation):
        return ()


def agent_usage(size: Resources) -> dict[str, Decimal]:
    """What an agent's pod of these requests counts against a quota (see the docstring)."""
    cores, memory = Decimal(size.cpu_millis) / 1000, Decimal(size.memory_bytes)
    return {"pods": Decimal(1), "count/pods": Decimal(1), "cpu": cores, "requests.cpu": cores,
            "memory": memory, "requests.memory": memory}


def _add(total: dict[str, Decimal], more: Mapping[str, Decimal], sign: int = 1) -> None:
    for resource, value in more.items():
        total[resource] = total.get(resource, Decimal(0)) + sign * value


def give_way(idle: Sequence[IdleAgent], needs: Sequence[QuotaNeed],
             gone: Sequence[IdleAgent] = ()) -> tuple[str, ...]:
    """The idle agents to give up so that the quota admits the waiting builds (in arrival
    order): for each, the oldest agents until their use, with what agents gone or going
    (`gone`: given up already, or now for room on nodes) free, makes room for its ask; a
    build given room takes its ask of it. A build no agents can make room for (an admin's
    `pods: 0`, an ask beyond what all of them free) costs none."""
    freed: dict[str, Decimal] = {}
    for agent in gone:
        _add(freed, agent_usage(agent.size))
    left = sorted(idle, key=lambda a: a.since)
    out: list[str] = []
    for need in needs:
        if not need.exceeded:
            continue
        have, chosen = dict(freed), []
        for agent in left:
            if room_if_gone(need.exceeded, have):
                break
            _add(have, agent_usage(agent.size))
            chosen.append(agent)
        if not room_if_gone(need.exceeded, have):
            continue
        out += [a.name for a in chosen]
        left = [a for a in left if a not in chosen]
        freed = have
        _add(freed, {e.resource: e.asked for e in need.exceeded}, -1)
    return tuple(out)
