"""Warm agents in Redis: per template, each warm agent's state (starting, idle, claimed), since
when, its size, node and, once claimed, its build. A claim is one Lua script, so two builds
never take one agent; giving an agent up is one too, so a claimed agent is never given up.

Keys (under the prefix):
  ``warm:<template>``  hash: agent name -> JSON {state, since, created, cpu, memory, node,
                       build, in_flight, bound}; ``since`` is when it entered its state (Redis'
                       clock for the scripts' changes), ``created`` when its pod was made,
                       ``in_flight`` [cpu, memory] what placement expects its build to use,
                       ``node`` the node placement chose, ``bound`` the one its pod is bound
                       to (kube-scheduler picks among placement's candidates), recorded when
                       it turns idle or by a pool pass; absent in entries of releases before
  ``warm-sizes``       hash: template -> JSON [cpu, memory], the size its pool makes agents at
                       now (from demand, workers.warm.pool), for the room nodes_needed counts
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from workers.adapters.redis_script import retryable
from workers.core.cluster import Resources
from workers.core.warm_pool import WarmAgent, WarmState

# Atomically: the agent this build claimed before (a retried task gets the same one), else
# the first idle agent of the order (ARGV 6+N...) that covers the build (workers.core.warm_claim:
# memory at least ARGV 2, and CPU at least ARGV 1 when ARGV 4 is '1'), else, should all of
# those have been taken since the order was made, the covering idle agent idle the longest;
# never one of the N (ARGV 5) agents ARGV 6..5+N (on a node a build may not take one on);
# marked claimed for the build (ARGV 3). nil when none covers it. Returns {name, its JSON}.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local all = redis.call('HGETALL', KEYS[1])
local cpu, memory, check_cpu = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[4] == '1'
local avoid, first = {}, 6 + tonumber(ARGV[5])
for i = 6, first - 1 do
  avoid[ARGV[i]] = true
end
local agents = {}
for i = 1, #all, 2 do
  local agent = cjson.decode(all[i + 1])
  if agent.state == 'claimed' and agent.build == ARGV[3] then
    return {all[i], all[i + 1]}
  end
  if agent.state == 'idle' and not avoid[all[i]] and tonumber(agent.memory) >= memory
      and (not check_cpu or tonumber(agent.cpu) >= cpu) then
    agents[all[i]] = agent
  end
end
local best, best_agent
for i = first, #ARGV do
  if agents[ARGV[i]] then
    best, best_agent = ARGV[i], agents[ARGV[i]]
    break
  end
end
if best == nil then
  for name, agent in pairs(agents) do
    local since = tonumber(agent.since)
    if best == nil or since < tonumber(best_agent.since)
        or (since == tonumber(best_agent.since) and name < best) then
      best, best_agent = name, agent
    end
  end
end
if best == nil then
  return nil
end
best_agent.state = 'claimed'
best_agent.build = ARGV[3]
best_agent.since = string.format('%.3f', now)
local raw = cjson.encode(best_agent)
redis.call('HSET', KEYS[1], best, raw)
return {best, raw}
"""

# Atomically: move the agent (ARGV 1) from state ARGV 2 to ARGV 3 (since now), recording the
# node its pod is bound to when ARGV 4 is given; an empty ARGV 3 deletes it. An idle one names
# no build (one unclaimed kept its claimer's, which workers.warm.pool.known read as its
# holder). 1 if it was in ARGV 2, else 0 (changed meanwhile: left as it is).
_MOVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local agent = cjson.decode(raw)
if agent.state ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
local t = redis.call('TIME')
agent.state = ARGV[3]
if ARGV[3] == 'idle' then
  agent.build = ''  -- a claim given back (unclaim): the repairs read the build as its holder
end
if ARGV[4] and ARGV[4] ~= '' then
  agent.bound = ARGV[4]
end
agent.since = string.format('%.3f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(agent))
return 1
"""

# Atomically: record the node the agent's (ARGV 1) pod is bound to (ARGV 3), if it is still
# in state ARGV 2; its state and since unchanged. 1 if recorded, else 0.
_BOUND = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local agent = cjson.decode(raw)
if agent.state ~= ARGV[2] then
  return 0
end
agent.bound = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(agent))
return 1
"""


@dataclass(frozen=True)
class WarmEntry:
    name: str
    template: str
    state: WarmState
    since: float
    created: float
    size: Resources
    node: str
    build: str = ""  # the build key that claimed it
    in_flight: Resources | None = None  # what placement expects its build to use (None: size)
    bound: str = ""  # the node its pod is bound to ("": not recorded yet)
    # its template's pod fingerprint when it was made (workers.core.warm_pool.pod_spec_of;
    # "": an entry of an earlier release, taken as current)
    spec: str = ""

    @property
    def where(self) -> str:
        """The node the agent runs on: the one its pod is bound to, else (not recorded yet:
        an entry of an earlier release, or one still starting) the one placement chose."""
        return self.bound or self.node

    @property
    def agent(self) -> WarmAgent:
        return WarmAgent(self.name, self.state, self.since)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sizes(raw: dict) -> dict[str, Resources]:
    return {_s(t): Resources(*json.loads(v)) for t, v in raw.items()}


def _entry(template: str, name: Any, raw: Any) -> WarmEntry:
    data = json.loads(_s(raw))
    use = data.get("in_flight")
    return WarmEntry(name=_s(name), template=template, state=WarmState(data["state"]),
                     since=float(data["since"]), created=float(data["created"]),
                     size=Resources(int(data["cpu"]), int(data["memory"])),
                     node=data.get("node", ""), build=data.get("build", ""),
                     in_flight=Resources(int(use[0]), int(use[1])) if use else None,
                     bound=data.get("bound") or "", spec=data.get("spec") or "")


class WarmStore:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.redis = connection
        self.prefix = prefix
        self._claim = connection.register_script(_CLAIM)
        self._move = connection.register_script(_MOVE)
        self._bound = connection.register_script(_BOUND)

    def _k(self, template: str) -> str:
        return f"{self.prefix}warm:{template}"

    def key(self, template: str) -> str:
        """The template's pool hash (agent -> its JSON entry): for a script of another store
        that reads an agent's state (CapacityStore.hold_warm_slots)."""
        return self._k(template)

    def add(self, template: str, name: str, *, size: Resources, node: str,
            now: float, in_flight: Resources | None = None, spec: str = "") -> None:
        """A warm agent whose pod was just made: starting."""
        use = in_flight or size
        raw = json.dumps({"state": str(WarmState.STARTING), "since": f"{now:.3f}",
                          "created": f"{now:.3f}", "cpu": size.cpu_millis,
                          "memory": size.memory_bytes, "node": node, "build": "",
                          "in_flight": [use.cpu_millis, use.memory_bytes], "spec": spec})
        with retryable():
            self.redis.hsetnx(self._k(template), name, raw)

    def set_sizes(self, sizes: Mapping[str, Resources]) -> None:
        """The size each pool makes its agents at now (a pool pass sets it)."""
        if sizes:
            with retryable():
                self.redis.hset(f"{self.prefix}warm-sizes", mapping={
                    t: json.dumps([r.cpu_millis, r.memory_bytes]) for t, r in sizes.items()})

    def sizes(self) -> dict[str, Resources]:
        """What set_sizes last set, by template (none before the first pool pass)."""
        with retryable():
            return _sizes(self.redis.hgetall(f"{self.prefix}warm-sizes"))

    def agents(self, template: str) -> list[WarmEntry]:
        with retryable():
            raw = self.redis.hgetall(self._k(template))
        return sorted((_entry(template, k, v) for k, v in raw.items()), key=lambda e: e.since)

    def known(self, agents: Mapping[str, str]) -> set[str]:
        """Of these agents (name -> template), those the store has, in one round trip."""
        if not agents:
            return set()
        with retryable(), self.redis.pipeline(transaction=False) as pipe:
            for name, template in agents.items():
                pipe.hexists(self._k(template), name)
            found = pipe.execute()
        return {name for name, there in zip(agents, found) if there}

    def all_agents(self, templates: Iterable[str]) -> dict[str, list[WarmEntry]]:
        """Every template's agents, in one round trip."""
        return self.agents_and_sizes(templates, sizes=False)[0]

    def agents_and_sizes(self, templates: Iterable[str], *, sizes: bool = True
                         ) -> tuple[dict[str, list[WarmEntry]], dict[str, Resources]]:
        """Every template's agents and (with `sizes`) what set_sizes last set, in one round
        trip."""
        names = list(templates)
        with retryable(), self.redis.pipeline(transaction=False) as pipe:
            for template in names:
                pipe.hgetall(self._k(template))
            if sizes:
                pipe.hgetall(f"{self.prefix}warm-sizes")
            rows = pipe.execute() if names or sizes else []
        made = _sizes(rows.pop()) if sizes else {}
        return {t: sorted((_entry(t, k, v) for k, v in raw.items()), key=lambda e: e.since)
                for t, raw in zip(names, rows)}, made

    def claim(self, template: str, *, size: Resources, build_key: str, cpu: bool = True,
              order: Sequence[str] = (), avoid: Sequence[str] = ()) -> WarmEntry | None:
        """An idle agent that covers `size` (its memory at least; its CPU too when `cpu`)
        and is not one of `avoid`, which this build now holds alone: the first of `order`
        still idle, else the one idle the longest (or the one it claimed before); None when
        no idle agent covers it."""
        with retryable():
            found = self._claim(keys=[self._k(template)],
                                args=[size.cpu_millis, size.memory_bytes, build_key,
                                      "1" if cpu else "0", len(avoid), *avoid, *order])
        return None if not found else _entry(template, found[0], found[1])

    def mark_idle(self, template: str, name: str, bound: str = "") -> bool:
        """Its agent came online: starting -> idle (False when it is not starting), with the
        node its pod is bound to when `bound` names it."""
        return self._moved(template, name, WarmState.STARTING, str(WarmState.IDLE), bound)

    def set_bound(self, template: str, name: str, node: str,
                  state: WarmState = WarmState.IDLE) -> bool:
        """Record the node the agent's pod is bound to, if it is still in `state`."""
        with retryable():
            return bool(self._bound(keys=[self._k(template)], args=[name, str(state), node]))

    def unclaim(self, template: str, name: str) -> bool:
        """A claim the build could not keep (no agent slot for it): claimed -> idle."""
        return self._moved(template, name, WarmState.CLAIMED, str(WarmState.IDLE))

    def give_up(self, template: str, name: str, state: WarmState = WarmState.IDLE) -> bool:
        """Forget the agent if it is still in `state` (by default idle: never a claimed one);
        True when it was, and its pod and Jenkins node are now the caller's to delete."""
        return self._moved(template, name, state, "")

    def forget(self, template: str, name: str) -> None:
        """Whatever its state (its pod is gone)."""
        with retryable():
            self.redis.hdel(self._k(template), name)

    def _moved(self, template: str, name: str, state: WarmState, to: str,
               bound: str = "") -> bool:
        with retryable():
            return bool(self._move(keys=[self._k(template)],
                                   args=[name, str(state), to, bound]))


