"""Capacity in Redis: per-node reservations of in-flight agents, the builds waiting for
capacity, and the capacity state that /metrics reads.

Keys (under the prefix):
  ``reservations``    hash: build key -> "node|cpu_millis|memory_bytes|expires_at"
  ``reservation-holds`` hash: build key -> "node|cpu_millis|memory_bytes#holds", what the
                      reservation's pod will hold beside cpu and memory (holds: "ephemeral
                      bytes;name=amount;..."), counted while its reservation of that head
                      lives; apart, so that an older release reads the reservations as before
  ``waiting``         sorted set: build key by arrival time (the order of re-driving)
  ``waiting-quota``   sorted set: those of them held by a ResourceQuota or a cap (wait reason
                      quota, paused or cap), by the same time: not counted as waiting ahead
                      when a build is sized; set when a build waits, and from the builds'
                      wait reasons on each refresh (mark_held)
  ``waiting-paused``  sorted set: those of them held by a pod count of 0 (wait reason
                      paused, an admin's pause), by the same time: left out of the oldest
                      wait that CIBuildsWaitingTooLong pages on; set when a build waits, and
                      from the builds' wait reasons on each refresh (mark_paused)
  ``capacity``        hash: waiting, shortfall, nodes needed, reference shape, updated_at
  ``capacity-nodes``  hash: node -> JSON of allocatable, requested, used, free
  ``too-big-noted-at`` sorted set: build key by when a capacity state last named it bigger
                      than a reference node (each such build is logged once); one named by no
                      write for TOO_BIG_NOTED_SECONDS is dropped
  ``slots``           hash: build key -> template, one per build that holds an agent slot
                      (counted against the template's maxConcurrent and the global maxAgents);
                      and warm agent -> "warm:<template>", one per starting or idle warm
                      agent (counted against maxAgents only), handed to the build that claims it
  ``unschedulable``   set: builds whose pod kube-scheduler refused on every candidate, every
                      try: the pod is left Pending to it (workers.agent_starts.unschedulable)
  ``given-way``       hash: warm agent -> "node|cpu_millis|memory_bytes|expires_at", one per
                      idle warm agent given up for waiting builds whose room its pod may still
                      hold (being deleted): counted free by the next give-way
                      (workers.warm.giving_way)
"""

import itertools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from workers.adapters.redis_script import retryable
from workers.core.capacity import CapacityState
from workers.core.cluster import Holding, Resources
from workers.core.fit import NOTHING_HELD, Held
from workers.core.errors import RetryableError
from workers.core.placement_index import NodeRow

_PAGE = 100  # waiting builds read at a time, oldest first, looking past paused ones

RESERVATION_TTL_SECONDS = 120
# The builds found bigger than a reference node (write_state), each logged once while it is,
# by when a write last named it; one named by no write for this long is dropped (the set
# dropped none while any build was too big: a key per too-big build, for as long as one was)
TOO_BIG_NOTED = "too-big-noted-at"
TOO_BIG_NOTED_SECONDS = 3600
# A warm agent given up counts its room free at most this long: more than a pod's default
# grace period (30 s) and a watch's lag; a pod stuck Terminating longer holds its room.
GIVEN_WAY_TTL_SECONDS = 120

# Atomically: drop expired reservations, sum the live ones on the node (but this build's),
# and take the slot only if what it needs (ARGV 8, 9) still fits under the node's capacity
# beside them; it is recorded at its in-flight size (ARGV 3, 4). What its pod will hold beside
# cpu and memory (ARGV 10: "ephemeral bytes;name=amount;...", or empty) must fit too, beside
# the holds of those reservations (KEYS 2), in the node's room for them (ARGV 11, the same
# form; empty: not checked): kube-scheduler refuses a pod over the node's GPUs. Its hostPorts
# (ARGV 10's "hp/protocol/hostIP/port=0" parts, counted as 0 of a resource by `amounts`) must
# not clash with those of the node's other
# reservations, as the NodePorts filter judges them (core.fit.ports_conflict), and its pod
# must have a slot beside theirs (ARGV 11's "pods/N" part: the pods the node may still take
# beside its pods, before the reservations; none: not checked). Not taken
# either (0) if one of the reservations the decision read (ARGV 13.. key, stored value pairs)
# was released or taken again since: the capacity left its pod out, and it would be counted
# nowhere; nor, when ARGV 12 is '1', if the node has a live reservation the decision did not
# read (another worker process placed a build there meanwhile: see CapacityStore.reserve).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 13, #ARGV, 2 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  local exp = held and string.match(held, '|([%d.]+)$')
  if held ~= ARGV[i + 1] or exp == nil or tonumber(exp) <= now then
    return 0
  end
end
local function amounts(text, into)
  local first = true
  for part in string.gmatch(text or '', '[^;]+') do
    if first then
      into['#ephemeral'] = (into['#ephemeral'] or 0) + (tonumber(part) or 0)
      first = false
    else
      local name, n = string.match(part, '^(.+)=(%d+)$')
      if name then into[name] = (into[name] or 0) + tonumber(n) end
    end
  end
  return into
end
local function ports(text, into)
  for proto, ip, port in string.gmatch(text or '', 'hp/([^/;]*)/([^/;]*)/(%d+)') do
    into[#into + 1] = {proto, ip, port}
  end
  return into
end
local all = redis.call('HGETALL', KEYS[1])
local cpu, mem, used, bound, others = 0, 0, {}, {}, 0
for i = 1, #all, 2 do
  local node, c, m, exp = string.match(all[i + 1], '^(.*)|(%d+)|(%d+)|([%d.]+)$')
  if exp == nil or tonumber(exp) <= now then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('HDEL', KEYS[2], all[i])
  elseif node == ARGV[1] and all[i] ~= ARGV[2] then
    others = others + 1
    cpu = cpu + tonumber(c)
    mem = mem + tonumber(m)
    local h = redis.call('HGET', KEYS[2], all[i])
    local tie, rest = string.match(h or '', '^(.*)#(.*)$')
    if tie == node .. '|' .. c .. '|' .. m then
      amounts(rest, used)
      ports(rest, bound)
    end
  end
end
if ARGV[12] == '1' and others ~= (#ARGV - 12) / 2 then
  return 0
end
if cpu + tonumber(ARGV[8]) > tonumber(ARGV[5]) or mem + tonumber(ARGV[9]) > tonumber(ARGV[6]) then
  return 0
end
local slots = string.match(ARGV[11], 'pods/(%d+)')
if slots and others + 1 > tonumber(slots) then
  return 0
end
local function wild(ip) return ip == '' or ip == '0.0.0.0' end
for _, want in ipairs(ports(ARGV[10], {})) do
  for _, have in ipairs(bound) do
    if want[1] == have[1] and want[3] == have[3]
        and (want[2] == have[2] or wild(want[2]) or wild(have[2])) then
      return 0
    end
  end
end
if ARGV[11] ~= '' then
  local room = amounts(ARGV[11], {})
  for name, n in pairs(amounts(ARGV[10], {})) do
    if n > 0 and (used[name] or 0) + n > (room[name] or 0) then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[2],
  ARGV[1] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. string.format('%.3f', now + tonumber(ARGV[7])))
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '#' .. ARGV[10])
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return 1
"""


def holds_text(held: Held) -> str:
    """`held` as the reservation scripts read it ("ephemeral bytes;name=amount;...;
    hp/protocol/hostIP/port=0;..."); empty when it holds nothing beside cpu and memory. A
    hostPort is written as an amount of 0 of a resource no node has: the release before,
    still running during a rolling upgrade, reads every part after the first as
    "name=amount" (its parse_holds raised ValueError on "hp/TCP//9100", failing each of its
    decisions while such a reservation lived), and counts 0 of it, as its script does."""
    if not (held.ephemeral_bytes or held.extended or held.host_ports):
        return ""
    return ";".join([str(held.ephemeral_bytes),
                     *(f"{name}={amount}" for name, amount in held.extended),
                     *(f"hp/{proto}/{ip}/{port}=0"
                       for proto, ip, port in sorted(held.host_ports))])


def room_text(room: Held) -> str:
    """A node's room (placement.hold_room) as the reservation script reads it: holds_text,
    and "pods/N" for the pods it may still take when its pod limit is known."""
    text = holds_text(room) or "0"
    return f"{text};pods/{room.pods}" if room.pods else text


def parse_holds(text: str) -> Held:
    first, *rest = text.split(";")
    # "hp/protocol/hostIP/port=0" (holds_text), or without "=0" as ex18 first wrote it
    ports = [part.split("=", 1)[0].split("/") for part in rest if part.startswith("hp/")]
    return Held(0, int(first or 0), tuple(sorted(
        (name, int(amount)) for name, amount in (
            part.rsplit("=", 1) for part in rest if part and not part.startswith("hp/")))),
        frozenset((proto, ip, int(port)) for _, proto, ip, port in ports))


# Atomically: a build that holds a slot keeps it (1); else take one unless the template's cap
# (ARGV 3, 0 = none) is reached (0) or the global one (ARGV 4, 0 = none) is (-1). The
# template's first: -1 says a slot of maxAgents is all the build lacks, and a build told so
# has a warm agent give its slot way (workers.engine.caps.take); with its template full too,
# the agent was lost for nothing and the build waited all the same.
# Both slot scripts' check of the template's cap: 0 (TEMPLATE_FULL) when the slots (KEYS 1)
# of template ARGV 2 number `per_template` (0 = no cap) already.
_TEMPLATE_FULL = """
if per_template > 0 then
  local n = 0
  for _, template in ipairs(redis.call('HVALS', KEYS[1])) do
    if template == ARGV[2] then
      n = n + 1
    end
  end
  if n >= per_template then
    return 0
  end
end
"""
_TAKE_SLOT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 1
end
local per_template, global = tonumber(ARGV[3]), tonumber(ARGV[4])
""" + _TEMPLATE_FULL + """if global > 0 and redis.call('HLEN', KEYS[1]) >= global then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
SLOT_TAKEN, TEMPLATE_FULL, ALL_FULL = 1, 0, -1
# A warm agent's slot names its template so: never equal to a template name, so it counts
# against maxAgents and no template's maxConcurrent (a warm agent is not a build).
WARM_SLOT = "warm:"
# Atomically: the warm agent's (ARGV 4) slot becomes the build's (ARGV 1, of template ARGV 2)
# that claimed it. A build that holds one already keeps it, and the agent's is freed (1).
# Else 0 when the template's cap (ARGV 3, 0 = none) is reached, -1 when the agent holds none
# (an older release's) and maxAgents (ARGV 5, 0 = none) is reached; else taken (1).
_HAND_OVER_SLOT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[1], ARGV[4])
  return 1
end
local per_template, global = tonumber(ARGV[3]), tonumber(ARGV[5])
""" + _TEMPLATE_FULL + """if redis.call('HDEL', KEYS[1], ARGV[4]) == 0 and global > 0
    and redis.call('HLEN', KEYS[1]) >= global then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# Atomically: a slot (KEYS 1) of value ARGV 1 for each agent (ARGV 2...) that holds none and
# is starting or idle in its pool (KEYS 2, workers.adapters.warm_store's JSON entries). The pool
# pass read the pool before (and asked Jenkins which agents are online since): a build in
# another worker that claimed one meanwhile had its slot handed over (_HAND_OVER_SLOT), and a
# plain HSETNX gave the claimed agent one again, counted twice against maxAgents; so did one
# given way or retired meanwhile, its pod gone. How many were given one.
_HOLD_WARM_SLOTS = """
local held = 0
for i = 2, #ARGV do
  local raw = redis.call('HGET', KEYS[2], ARGV[i])
  if raw then
    local state = cjson.decode(raw).state
    if state == 'starting' or state == 'idle' then
      held = held + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1])
    end
  end
end
return held
"""

# The builds waiting (KEYS 1) that arrived before ARGV 1, but those held by a quota (KEYS 2)
# that still wait: an entry of KEYS 2 whose build no longer waits counts for nothing.
_AHEAD = """
local bound = '(' .. ARGV[1]
local n = redis.call('ZCOUNT', KEYS[1], '-inf', bound)
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', bound)) do
  if redis.call('ZSCORE', KEYS[1], key) then
    n = n - 1
  end
end
return n
"""

# The pause marks, or the held marks (KEYS 2), of the builds waiting (KEYS 1), from their wait
# reasons as just read (ARGV: build key, "1" if marked, in pairs): a build not waiting any more
# loses its mark.
_MARK_PAUSED = """
for i = 1, #ARGV, 2 do
  local since = redis.call('ZSCORE', KEYS[1], ARGV[i])
  local marked = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if ARGV[i + 1] == '1' and since then
    if marked ~= since then redis.call('ZADD', KEYS[2], since, ARGV[i]) end
  elseif marked then
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return 0
"""

# Atomically: delete each reservation (ARGV key, value pairs) only if it still holds the value
# read: one taken again since (a new provision of the build) is another's, and stays.
_RELEASE_UNCHANGED = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[2], ARGV[i])
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"""

# Atomically: give each reservation (ARGV 2.. key, value pairs) ARGV 1 seconds from now if it
# still holds the value read and has less than half of that left (renewed once in a while, not
# at every pass: a renewal changes the value, and a decision that read it decides again); the
# others (released or taken again since) stay as they are.
_RENEW_UNCHANGED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    local head, exp = string.match(ARGV[i + 1], '^(.*)|([%d.]+)$')
    if exp ~= nil and tonumber(exp) - now < ttl / 2 then
      redis.call('HSET', KEYS[1], ARGV[i], head .. '|' .. string.format('%.3f', now + ttl))
      n = n + 1
    end
  end
end
return n
"""


# The room of one warm agent given up (ARGV 1) on node ARGV 2, of ARGV 3 millicores and ARGV 4
# bytes, for ARGV 5 seconds from now (Redis' clock, as the reservations').
_GIVE_WAY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|'
  .. string.format('%.3f', now + tonumber(ARGV[5])))
return 1
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CapacityStore:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.redis = connection
        self.prefix = prefix
        self._reserve = connection.register_script(_RESERVE)
        self._take_slot = connection.register_script(_TAKE_SLOT)
        self._hand_over_slot = connection.register_script(_HAND_OVER_SLOT)
        self._hold_warm_slots = connection.register_script(_HOLD_WARM_SLOTS)
        self._release_unchanged = connection.register_script(_RELEASE_UNCHANGED)
        self._renew_unchanged = connection.register_script(_RENEW_UNCHANGED)
        self._ahead = connection.register_script(_AHEAD)
        self._mark_paused = connection.register_script(_MARK_PAUSED)
        self._give_way = connection.register_script(_GIVE_WAY)

    def _k(self, name: str) -> str:
        return self.prefix + name

    # --- reservations ---------------------------------------------------------------------
    def reserve(self, *, node: str, build_key: str, size: Resources, capacity: Resources,
                needs: Resources | None = None, read: Mapping[str, str] | None = None,
                holds: Held = NOTHING_HELD, read_all: bool = False,
                ttl_seconds: int = RESERVATION_TTL_SECONDS) -> bool:
        """Take `size` on `node` for this build if the live reservations there plus `needs`
        (default: `size`) stay within `capacity` (the node's room before in-flight agents).
        `size` is what the agent counts in flight until its use shows (placement's
        in-flight estimate, which may exceed its request); `needs` is its request, which
        the decision found room for. `read`: the reservations `capacity` was computed
        beside (build key -> stored value, from reservation_records), whose pods it left
        out: if one was released or taken again since, nothing is taken (False), as that
        pod would then be counted neither here nor in `capacity`. `holds`: what its pod will
        hold beside cpu and memory (ephemeral-storage, a GPU: fit.Needs), taken only if it
        fits beside the other reservations' holds in `capacity`'s room for them (a Holding;
        a plain Resources checks none). `read_all`: `read` is every reservation the node
        had, and nothing is taken if it has another now, a build another worker process
        placed there since: the decision, which did not see it, may have chosen the node for
        being the idlest, and room alone was checked, so two processes deciding a burst at
        the same moment piled builds onto one node while others stayed idle. Atomic across
        workers; a build holds one reservation at a time."""
        needs = size if needs is None else needs
        seen = [part for pair in (read or {}).items() for part in pair]
        room = room_text(capacity.held) if isinstance(capacity, Holding) else ""
        try:
            return bool(self._reserve(keys=[self._k("reservations"),
                                            self._k("reservation-holds")], args=[
                node, build_key, size.cpu_millis, size.memory_bytes, capacity.cpu_millis,
                capacity.memory_bytes, ttl_seconds, needs.cpu_millis, needs.memory_bytes,
                holds_text(holds), room, "1" if read_all else "0", *seen]))
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err

    def reservations(self) -> dict[str, tuple[str, Resources]]:
        """Live reservations: build key -> (node, size; a Holding when its pod will hold
        more beside cpu and memory)."""
        return {key: (node, size) for key, (node, size, _) in self.reservation_records().items()}

    def reservation_records(self) -> dict[str, tuple[str, Resources, str]]:
        """Live reservations: build key -> (node, size, the stored value, which names this
        one reservation: see release_unchanged)."""
        with self.redis.pipeline(transaction=False) as pipe:  # one round trip: read per decision
            pipe.time()
            pipe.hgetall(self._k("reservations"))
            pipe.hgetall(self._k("reservation-holds"))
            (seconds, micros), stored, held = pipe.execute()
        now = float(f"{seconds}.{micros:06d}")
        out = {}
        for key, value in stored.items():
            raw = _s(value)
            head, expires = raw.rsplit("|", 1)
            node, cpu, mem = head.rsplit("|", 2)
            if float(expires) > now:
                size = Resources(int(cpu), int(mem))
                tie, _, text = _s(held.get(key, b"")).partition("#")
                if text and tie == head:  # a reservation of an older release has none
                    size = Holding.of(size, parse_holds(text))
                out[_s(key)] = (node, size, raw)
        return out

    def release(self, *build_keys: str) -> None:
        if build_keys:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(self._k("reservations"), *build_keys)
                pipe.hdel(self._k("reservation-holds"), *build_keys)
                pipe.execute()

    def release_unchanged(self, records: dict[str, str]) -> int:
        """Release these reservations (build key -> stored value, from reservation_records)
        unless taken again since they were read; how many went."""
        if not records:
            return 0
        args = [part for pair in records.items() for part in pair]
        return int(self._release_unchanged(keys=[self._k("reservations"),
                                                 self._k("reservation-holds")], args=args))

    def renew_unchanged(self, records: dict[str, str],
                        ttl_seconds: int = RESERVATION_TTL_SECONDS) -> int:
        """Let these reservations (build key -> stored value, from reservation_records) live
        `ttl_seconds` from now, unless released or taken again since they were read, or
        with half of that or more left; how many were renewed."""
        if not records:
            return 0
        args = [ttl_seconds, *(part for pair in records.items() for part in pair)]
        return int(self._renew_unchanged(keys=[self._k("reservations")], args=args))

    # --- room given way by idle warm agents (workers.warm.giving_way) ----------------------
    def record_given_way(self, agent: str, *, node: str, size: Resources,
                         ttl_seconds: int = GIVEN_WAY_TTL_SECONDS) -> None:
        """The warm agent is being given up for waiting builds: its pod's room on `node`
        (`size`, its requests) is theirs, for `ttl_seconds` at most."""
        with retryable():
            self._give_way(keys=[self._k("given-way")], args=[
                agent, node, size.cpu_millis, size.memory_bytes, ttl_seconds])

    def given_way(self) -> dict[str, tuple[str, Resources]]:
        """The warm agents given up, not yet expired: agent -> (node, size); the expired ones
        are dropped."""
        with retryable(), self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hgetall(self._k("given-way"))
            (seconds, micros), stored = pipe.execute()
        now = float(f"{seconds}.{micros:06d}")
        out, expired = {}, []
        for key, value in stored.items():
            node, cpu, mem, expires = _s(value).rsplit("|", 3)
            if float(expires) > now:
                out[_s(key)] = (node, Resources(int(cpu), int(mem)))
            else:
                expired.append(key)
        if expired:
            self.forget_given_way(*expired)
        return out

    def forget_given_way(self, *agents: str | bytes) -> None:
        if agents:
            with retryable():
                self.redis.hdel(self._k("given-way"), *agents)

    # --- agent slots (caps) ---------------------------------------------------------------
    def take_slot(self, *, build_key: str, template: str, max_concurrent: int | None,
                  max_agents: int | None) -> int:
        """SLOT_TAKEN (also when the build holds one already), TEMPLATE_FULL or ALL_FULL.
        Counted and taken in one script, so racing workers never exceed a cap."""
        try:
            return int(self._take_slot(keys=[self._k("slots")], args=[
                build_key, template, max_concurrent or 0, max_agents or 0]))
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err

    def take_warm_slot(self, agent: str, template: str, max_agents: int | None) -> bool:
        """A slot of maxAgents for a warm agent about to start; False when maxAgents is
        full (builds and the pools' agents together)."""
        return self.take_slot(build_key=agent, template=WARM_SLOT + template,
                              max_concurrent=None, max_agents=max_agents) == SLOT_TAKEN

    def hold_warm_slots(self, template: str, agents: Sequence[str], pool_key: str) -> int:
        """A slot for each of the template's warm agents that holds none (one started by a
        release before slots counted them), whatever the cap: its pod exists. Only for one
        still starting or idle in its pool (the hash `pool_key`, workers.adapters.warm_store)
        when the slot is taken: the caller read the pool before (_HOLD_WARM_SLOTS). How many
        were given one."""
        if not agents:
            return 0
        with retryable():
            return int(self._hold_warm_slots(keys=[self._k("slots"), pool_key],
                                             args=[WARM_SLOT + template, *agents]))

    def hand_over_slot(self, agent: str, *, build_key: str, template: str,
                       max_concurrent: int | None, max_agents: int | None) -> int:
        """The claimed warm agent's slot becomes its build's: SLOT_TAKEN, TEMPLATE_FULL or
        ALL_FULL (_HAND_OVER_SLOT)."""
        with retryable():
            return int(self._hand_over_slot(keys=[self._k("slots")], args=[
                build_key, template, max_concurrent or 0, agent, max_agents or 0]))

    def free_slots(self, *build_keys: str) -> int:
        return int(self.redis.hdel(self._k("slots"), *build_keys)) if build_keys else 0

    def slots(self) -> dict[str, str]:
        """Build key -> template of every build holding a slot."""
        return {_s(k): _s(v) for k, v in self.redis.hgetall(self._k("slots")).items()}

    # --- waiting for capacity -------------------------------------------------------------
    def add_waiting(self, build_key: str, arrived_at: float, *, on_quota: bool = False,
                    paused: bool = False, on_cap: bool = False) -> None:
        """Wait in arrival order; a build already waiting keeps its turn. `on_quota`: it
        waits for room in a ResourceQuota, not on nodes (until it waits for another reason);
        `paused`: for a pod count of 0 there (an admin's pause: implies on_quota); `on_cap`:
        for an agent slot (workers.engine.caps), not on nodes either."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self._k("waiting"), {build_key: arrived_at}, nx=True)
            for name, marked in (("waiting-quota", on_quota or paused or on_cap),
                                 ("waiting-paused", paused)):
                if marked:
                    pipe.zadd(self._k(name), {build_key: arrived_at})
                else:
                    pipe.zrem(self._k(name), build_key)
            pipe.execute()

    def remove_waiting(self, build_key: str) -> None:
        """The build no longer waits: for capacity, or as unschedulable."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self._k("waiting"), build_key)
        pipe.zrem(self._k("waiting-quota"), build_key)
        pipe.zrem(self._k("waiting-paused"), build_key)
        pipe.srem(self._k("unschedulable"), build_key)
        pipe.execute()

    def hold_unschedulable(self, build_key: str) -> None:
        """The build waits as unschedulable with its pod left Pending (not in `waiting`: no
        re-drive places it again)."""
        self.redis.sadd(self._k("unschedulable"), build_key)

    def unschedulable(self) -> list[str]:
        return sorted(_s(k) for k in self.redis.smembers(self._k("unschedulable")))

    def waiting(self) -> list[str]:
        return [_s(k) for k in self.redis.zrange(self._k("waiting"), 0, -1)]

    def still_waiting(self, keys: list[str]) -> set[str]:
        """Which of `keys` wait now, in one round trip."""
        if not keys:
            return set()
        scores = self.redis.zmscore(self._k("waiting"), keys)
        return {key for key, score in zip(keys, scores) if score is not None}

    def waiting_first(self, count: int) -> tuple[int, list[str]]:
        """(how many builds wait, the `count` that have waited longest, longest first): two
        reads in one round trip, whatever the number waiting (the status page's; plain reads,
        the web's Redis user may ZCARD and ZRANGE). Not in MULTI: a Redis full under
        noeviction refuses every command queued in one, reads too (processCommand), and the
        page is what an operator opens then; a build that arrives between the two is the
        only difference."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._k("waiting"))
            pipe.zrange(self._k("waiting"), 0, count - 1)
            total, keys = pipe.execute()
        return int(total), [_s(k) for k in keys]

    def oldest_waiting_since(self) -> float | None:
        """When the longest-waiting build arrived, or None when none waits."""
        first = self.redis.zrange(self._k("waiting"), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def oldest_unpaused_since(self) -> float | None:
        """The same, leaving out the builds an admin's pause holds (`pods: 0`, wait reason
        paused): the wait that pages. None when none other waits."""
        # Plain reads, no script: /metrics runs this under the web's Redis user, whose ACL
        # allows no EVAL/EVALSHA (issue 17; the chart's ci-autoscaler.redisWebAcl): a script
        # refused there blanked every Redis-read series and set ci_autoscaler_redis_up 0.
        paused = set(self.redis.zrange(self._k("waiting-paused"), 0, -1))
        for offset in itertools.count(0, _PAGE):
            page = self.redis.zrange(self._k("waiting"), offset, offset + _PAGE - 1,
                                     withscores=True)
            for key, since in page:
                if key not in paused:
                    return float(since)
            if len(page) < _PAGE:
                return None
        return None  # not reached: itertools.count never ends

    @staticmethod
    def oldest_held_since(state: Mapping[str, str]) -> float | None:
        """From a read_state: when the longest-waiting build held as unschedulable arrived
        (write_state's `held_since`), or None."""
        value = state.get("held_since") or ""
        return float(value) if value else None

    def mark_paused(self, paused: dict[str, bool]) -> None:
        """Set the pause marks of waiting builds (build key -> paused) from their wait reasons,
        on every refresh of the capacity state: a build paused before the mark existed (an
        upgrade) has none, and a re-drive re-marks only the builds it tries (one that waits
        makes its template full for the rest of the pass). A mark read a moment before a
        worker changed the build's reason is set right by the next refresh."""
        if paused:
            self._mark_paused(keys=[self._k("waiting"), self._k("waiting-paused")],
                              args=[part for key, on in paused.items()
                                    for part in (key, "1" if on else "0")])

    def mark_held(self, held: dict[str, bool]) -> None:
        """The same for the held marks (build key -> held by a ResourceQuota or a cap): a
        build that began waiting on a cap before the mark counted caps (an upgrade, or a
        re-drive by a worker of the release before, whose add_waiting clears it) has none, and
        a re-drive tries only the first chunk of a full template's builds."""
        if held:
            self._mark_paused(keys=[self._k("waiting"), self._k("waiting-quota")],
                              args=[part for key, on in held.items()
                                    for part in (key, "1" if on else "0")])

    def waiting_ahead_of(self, arrived_at: float) -> int:
        """The builds waiting that arrived before `arrived_at` and want room on nodes: one
        held by a ResourceQuota or a cap is not counted (room on nodes would not start it;
        counted, it kept every later build from growing into free room), until it waits for
        another reason or is placed (a re-drive once the quota or a slot frees)."""
        return int(self._ahead(keys=[self._k("waiting"), self._k("waiting-quota")],
                               args=[repr(float(arrived_at))]))

    # --- capacity state -------------------------------------------------------------------
    def write_state(self, state: CapacityState, nodes: Iterable[NodeRow],
                    *, reasons: dict[str, int], metrics_available: bool,
                    too_big: Mapping[str, str] | None = None,
                    held_since: float | None = None,
                    now: float | None = None) -> list[str]:
        """The capacity state and one row per node (see placement.NodeRow), replacing the
        rows written before; `too_big`: why each build bigger than a reference node waits
        (waiting_text.too_big_text), which the status page shows; `held_since`: when the
        longest-waiting build held as unschedulable arrived (its pod left Pending to the
        scheduler, it is not in the waiting set: oldest_held_since). The builds of `too_big`
        no write of the last TOO_BIG_NOTED_SECONDS named (to be logged once each)."""
        too_big = dict(too_big or {})
        now = time.time() if now is None else now
        fields = {
            "waiting": state.waiting, "nodes_needed": state.nodes_needed,
            "unplaceable": state.unplaceable, "too_big": json.dumps(too_big),
            "shortfall_cpu_millis": state.shortfall.cpu_millis,
            "shortfall_memory_bytes": state.shortfall.memory_bytes,
            "reference_cpu_millis": state.reference.cpu_millis,
            "reference_memory_bytes": state.reference.memory_bytes,
            "metrics_available": int(metrics_available),
            "reasons": json.dumps(reasons), "updated_at": now,
            "held_since": "" if held_since is None else repr(held_since),
        }
        # JSON of plain ints, formatted directly: this runs for every node on every decision
        per_node = {name: f'{{"allocatable": [{ac}, {am}], "requested": [{rc}, {rm}], '
                          f'"used": {"null" if uc is None else f"[{uc}, {um}]"}, '
                          f'"free": [{fc}, {fm}]}}'
                    for name, ac, am, rc, rm, uc, um, fc, fm in nodes}
        with self.redis.pipeline() as pipe:
            pipe.hset(self._k("capacity"), mapping={k: str(v) for k, v in fields.items()})
            pipe.delete(self._k("capacity-nodes"))
            if per_node:
                pipe.hset(self._k("capacity-nodes"), mapping=per_node)
            noted, first = self._k(TOO_BIG_NOTED), len(pipe)
            for key in too_big:  # 1: not named lately (every process writes the state)
                pipe.zadd(noted, {key: now}, nx=True)
            if too_big:
                pipe.zadd(noted, dict.fromkeys(too_big, now), xx=True)  # named now
                pipe.expire(noted, TOO_BIG_NOTED_SECONDS)
            # Dropped by time, not by this write's view: another process's write of a moment
            # ago may name a build that came (or left) in between, which would be told again.
            pipe.zremrangebyscore(noted, "-inf", f"({now - TOO_BIG_NOTED_SECONDS!r}")
            added = pipe.execute()[first:first + len(too_big)]
        return [key for key, new in zip(too_big, added) if new]

    def write_scale_up_pods(self, count: int) -> None:
        """How many scale-up pods the reconcile pass left (workers.engine.scale_up), beside the
        capacity state (write_state leaves the field alone)."""
        self.redis.hset(self._k("capacity"), "scale_up_pods", str(count))

    def read_state(self) -> tuple[dict[str, str], dict[str, dict]]:
        """Read in one round trip, outside a transaction: a Redis full under noeviction (the
        chart's policy) refuses every command queued in MULTI, reads too, and the status page
        (and every reader) failed exactly when Redis was full. write_state writes both keys in
        one transaction, so a read between its two hashes sees one pass or the next."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k("capacity"))
            pipe.hgetall(self._k("capacity-nodes"))
            state, nodes = pipe.execute()
        return ({_s(k): _s(v) for k, v in state.items()},
                {_s(k): json.loads(v) for k, v in nodes.items()})


