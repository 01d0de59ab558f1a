-- wrk script for bench/ingest.py: distinct GitLab push deliveries, optionally paced.
--
-- Environment (read once per wrk thread):
--   INGEST_BODY    the real push payload (its checkout_sha is replaced per delivery)
--   INGEST_TOKEN   X-Gitlab-Token to send
--   INGEST_COPIES  each delivery is sent this many times in a row (1: all distinct, 2: twice)
--   INGEST_RATE    requests/s for each wrk thread; 0 or unset: as fast as the server answers
--   INGEST_RUN     a run id, so deliveries differ between runs
--   INGEST_CLOSE   1: every request on a new connection (Connection: close), as GitLab sends
--                  each delivery
-- Each delivery gets its own X-Gitlab-Event-UUID and its own 40-hex commit (so its own build
-- key). Pacing keeps a schedule (one slot every 1/rate s) and delays each request to its slot,
-- on a monotonic clock: the rate does not sag when latency grows, as long as a connection is
-- free (use enough connections). done() prints one JSON line starting with "INGEST ".
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } ingest_timespec;
int clock_gettime(int clk_id, ingest_timespec *tp);
]]
local ts = ffi.new("ingest_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local ORIGINAL_SHA = "a4bf10d93a2d136f1db911b6f1c03d26d835a44f"
local pieces, headers, copies, interval, next_at, n, run, seq

function init(args)
  local f = assert(io.open(os.getenv("INGEST_BODY"), "rb"))
  local template = f:read("*a")
  f:close()
  pieces = {}
  local start = 1
  while true do
    local i, j = template:find(ORIGINAL_SHA, start, true)
    if not i then break end
    table.insert(pieces, template:sub(start, i - 1))
    start = j + 1
  end
  table.insert(pieces, template:sub(start))
  assert(#pieces > 1, "the payload does not hold the expected checkout_sha")
  copies = tonumber(os.getenv("INGEST_COPIES") or "1")
  local rate = tonumber(os.getenv("INGEST_RATE") or "0")
  interval = rate > 0 and 1000 / rate or 0
  run = os.getenv("INGEST_RUN") or "run"
  seq = tonumber(os.getenv("INGEST_SEQ") or "0")
  headers = {["Content-Type"] = "application/json", ["X-Gitlab-Event"] = "Push Hook",
             ["X-Gitlab-Token"] = os.getenv("INGEST_TOKEN") or ""}
  if os.getenv("INGEST_CLOSE") == "1" then headers["Connection"] = "close" end
  n = 0
  statuses = {}
end

function delay()
  if interval == 0 then return 0 end
  local t = now_ms()
  if next_at == nil then next_at = t end
  local wait = next_at - t
  next_at = next_at + interval
  if wait < 0 then return 0 end
  return wait
end

function request()
  local delivery = math.floor(n / copies)
  n = n + 1
  -- a commit of its own per wrk run (INGEST_SEQ), thread and delivery: runs of the webhook
  -- that share a Redis (bench/ingest.py's slices) must not dedupe each other's pushes
  local sha = string.format("%s%08x%08x%08x", string.rep("b", 16), seq, tid, delivery)
  headers["X-Gitlab-Event-UUID"] = string.format("%s-%d-%d", run, tid, delivery)
  return wrk.format("POST", nil, headers, table.concat(pieces, sha))
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'INGEST {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status_errors": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f, "statuses": {%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ", ")))
end
