//! The state a fleet shares through Redis: rate limits and budgets. Every instance counts the
//! same windows and the same spend, so N instances together admit exactly a limit and spend a
//! budget as one. One request costs one round trip: a Lua script checks every budget (settled
//! spend plus reservations of requests in flight, fleet-wide) and every scope's rpm, tpm and
//! parallel limit and, only if all pass, reserves the request's estimate and counts it in all
//! of them (atomic on the Redis server). Admissions that arrive while a call is out go together
//! in the next call (one script run and one answer to read for many requests; none waits for
//! a timer). Settling (the cost, tokens used, the parallel slot) is a second script sent in
//! batches off the request path. Redis that is slow or gone never
//! stops traffic: each call has a short deadline, and past it the instance counts locally (a
//! warning once, a counter, `/health/readiness` says so) until Redis answers again.
//!
//! PostgreSQL stays the truth for spend: a budget counter Redis does not hold (first use, or
//! Redis lost it) is seeded from the database's spend, and one below the database's is raised
//! to it.
//!
//! Changes travel the same way: an instance that changes an object (a key blocked, a team
//! updated, a model added) publishes its kind and id on `llmux:invalidate`, and every instance
//! drops its cached copy at once instead of serving it for the cache's 5 s.
//!
//! Keys: `llmux:rl:{scope}:{window}` (a hash of requests `r` and tokens `t` for one minute,
//! expiring after two); `llmux:par:{scope}` (a sorted set of the requests in flight scored by
//! their start, so an instance that died mid-request frees its slots after `IN_FLIGHT_TTL_MS`);
//! `llmux:bud:{kind}:{id}` (a budget: spend `s` of the period ending at `p`, `e` once that
//! period is over, the generation `g` of the counter, reservations `r`);
//! `llmux:held:{instance}` (each request the instance has reserved for: admission time, amount,
//! and the budgets and counter generations it is held on); `llmux:alive` (instances by last
//! heartbeat). A reservation is given back exactly once, by whichever comes first of its
//! settlement, the instance's sweep of requests it no longer has (an admission answered after
//! its deadline, a settlement lost to a Redis error), or any instance's heartbeat reaping a
//! stopped instance's entries; and only to the counter generation it was made in (a counter
//! Redis lost and rebuilt from the database is not given back what it never held).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use llmux::router::{DeploymentStats, FleetReport, LocalReport};
use llmux_store::Kind;

use super::budget::{BudgetCheck, Exceeded};
use super::limits::{LimitExceeded, Limits, Remaining};

const WINDOW_MS: i64 = 60_000;
/// A request in flight longer than this no longer holds a parallel slot (its instance died
/// without settling it).
const IN_FLIGHT_TTL_MS: i64 = 15 * 60_000;
/// Each instance says it is alive this often (`llmux:alive`, a sorted set by last heartbeat).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance silent this long has stopped: any instance's heartbeat gives back what it held.
const DEAD_AFTER_MS: i64 = 10_000;
/// How often an instance gives back what it holds for requests it no longer knows, and how old
/// such a request's admission must be.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
const SWEEP_AFTER_MS: i64 = 30_000;

const ACQUIRE: &str = r#"
-- One request's arguments (A): window start, now (ms), request id, ttl of a parallel slot (ms),
-- scope count, then per scope: name, rpm, tpm, parallel (-1: no limit); then budget count, the
-- request's estimate, this instance's name, and per budget: owner, max budget, spend in the
-- database, end of its period (0: none). Budgets are checked first, then limits; the request is
-- counted in all of them only if every one has room. Its reservation is held under this
-- instance's name (`llmux:held:{instance}`), which is how it is given back: once, by its
-- settlement, by the instance's sweep of requests it no longer knows, or by any instance
-- reaping a stopped one.
-- Several requests' admissions come in one call (those that arrived while the previous call was
-- out): ARGV[1] is their count, then per request the number of its arguments and the
-- arguments above. They are decided one after another, as separate calls would decide them,
-- on counters read once per call and kept here (`buds`, `windows`); what the admitted requests
-- add is written once per counter at the end. The answer is, per request, the length of its
-- answer and the answer.
local buds, windows, held = {}, {}, {}

-- A budget counter as this call knows it: spend `s`, period end `p`, `ended`, reservations `r`
-- (as stored, may be below 0), generation `g`, reservations added by this call `add`.
local function budget(bk, stored, period, now, id)
  local b = buds[bk]
  if b then return b end
  local got = redis.call('HMGET', bk, 's', 'p', 'e', 'r', 'g')
  b = {s = tonumber(got[1]), p = tonumber(got[2] or '0'), ended = got[3] == '1',
       r = tonumber(got[4] or '0'), g = got[5], add = 0}
  if not b.s then
    -- Not known (first use, or Redis lost it): the database is the truth. A new generation:
    -- requests reserved in a lost one do not give their reservations back to this one.
    b.s, b.p, b.ended, b.g = stored, period, false, now .. ':' .. id
    redis.call('HSET', bk, 's', string.format('%.17g', b.s), 'p', tostring(b.p), 'e', '0', 'g', b.g)
    redis.call('PEXPIRE', bk, 86400000)
  elseif not b.g then
    b.g = now .. ':' .. id
    redis.call('HSET', bk, 'g', b.g)
  end
  buds[bk] = b
  return b
end

-- A rate window as this call knows it: requests `r`, tokens `t`, requests added `add`.
local function rate_window(w)
  local c = windows[w]
  if c then return c end
  local rt = redis.call('HMGET', w, 'r', 't')
  c = {r = tonumber(rt[1] or '0'), t = tonumber(rt[2] or '0'), add = 0}
  windows[w] = c
  return c
end

local function admit(A)
  local window, now, id, ttl, n = A[1], tonumber(A[2]), A[3], tonumber(A[4]), tonumber(A[5])
  local nb_at = 6 + n * 4
  local nb, estimate, instance = tonumber(A[nb_at]), A[nb_at + 1], A[nb_at + 2]
  local room = nil
  local counters = {}
  for j = 1, nb do
    local at = nb_at + 2 + (j - 1) * 4
    local owner, max, stored, period = A[at + 1], tonumber(A[at + 2]), tonumber(A[at + 3]), tonumber(A[at + 4])
    local bk = 'llmux:bud:' .. owner
    local b = budget(bk, stored, period, now, id)
    if period > b.p then
      -- A new period (the database reset it): start from what the database holds for it.
      b.s, b.p, b.ended = stored, period, false
      redis.call('HSET', bk, 's', string.format('%.17g', b.s), 'p', tostring(b.p), 'e', '0')
    elseif period == b.p and stored > b.s and not b.ended then
      -- Spend written by a path that did not pass here (a restart lost an increment).
      b.s = stored
      redis.call('HSET', bk, 's', string.format('%.17g', b.s))
    end
    if b.p > 0 and b.p <= now and not b.ended then
      -- The period is over, though the database has not been reset yet: its spend no longer counts.
      b.s, b.ended = 0, true
      redis.call('HSET', bk, 's', '0', 'e', '1')
    end
    local r = math.max(b.r, 0)
    if b.s + r >= max then return {tostring(j), '4', string.format('%.17g', b.s), tostring(max)} end
    if room == nil or max - b.s - r < room then room = max - b.s - r end
    counters[j] = {owner, b}
  end
  local scopes = {}
  for i = 1, n do
    local at = 5 + (i - 1) * 4
    local scope, rpm, tpm, par = A[at + 1], tonumber(A[at + 2]), tonumber(A[at + 3]), tonumber(A[at + 4])
    local c = rate_window('llmux:rl:' .. scope .. ':' .. window)
    if rpm >= 0 and c.r >= rpm then return {tostring(i), '1', tostring(rpm)} end
    if tpm >= 0 and c.t >= tpm then return {tostring(i), '2', tostring(tpm)} end
    if par >= 0 then
      local p = 'llmux:par:' .. scope
      redis.call('ZREMRANGEBYSCORE', p, '-inf', now - ttl)
      if redis.call('ZCARD', p) >= par then return {tostring(i), '3', tostring(par)} end
    end
    scopes[i] = {c, scope, par}
  end
  -- Admitted: counted in every budget and scope.
  if nb > 0 then
    -- The entry: admission time, amount, then each budget's owner and generation.
    local entry = now .. '\30' .. estimate
    local amount = tonumber(estimate)
    for j = 1, nb do
      local owner, b = counters[j][1], counters[j][2]
      b.r = b.r + amount
      b.add = b.add + amount
      entry = entry .. '\30' .. owner .. '\31' .. (b.g or '')
    end
    local key = 'llmux:held:' .. instance
    held[key] = held[key] or {}
    local list = held[key]
    list[#list + 1] = id
    list[#list + 1] = entry
  end
  local out = {'0'}
  for i = 1, n do
    local c, scope, par = scopes[i][1], scopes[i][2], scopes[i][3]
    c.r = c.r + 1
    c.add = c.add + 1
    if par >= 0 then
      local p = 'llmux:par:' .. scope
      redis.call('ZADD', p, now, id)
      redis.call('PEXPIRE', p, ttl)
    end
    out[#out + 1] = tostring(c.r)
    out[#out + 1] = tostring(c.t)
  end
  -- The least room any budget had left (so a request near a budget's end settles at once).
  if room ~= nil then out[#out + 1] = tostring(room) end
  return out
end

local answers = {}
local at = 2
for _ = 1, tonumber(ARGV[1]) do
  local m = tonumber(ARGV[at])
  -- One request's error answers it alone (`E`); the others are decided.
  local ok, out = pcall(admit, {unpack(ARGV, at + 1, at + m)})
  if not ok then out = {'E'} end
  at = at + 1 + m
  answers[#answers + 1] = tostring(#out)
  for _, v in ipairs(out) do answers[#answers + 1] = v end
end
-- What the admitted requests added, once per counter.
for bk, b in pairs(buds) do
  if b.add ~= 0 then redis.call('HINCRBYFLOAT', bk, 'r', string.format('%.17g', b.add)) end
end
for w, c in pairs(windows) do
  if c.add > 0 and redis.call('HINCRBY', w, 'r', c.add) == c.add then
    redis.call('PEXPIRE', w, 120000)
  end
end
for key, list in pairs(held) do
  redis.call('HSET', key, unpack(list))
end
return answers
"#;

/// Lua shared by the scripts that give reservations back: `release_held(entry)` subtracts a held
/// entry's amount from each budget it names, in the generation it was made in (a counter Redis
/// lost and rebuilt is not given back what it never held).
const HELD: &str = r#"
local function release_held(entry)
  local parts = {}
  for part in string.gmatch(entry, '[^\30]+') do parts[#parts + 1] = part end
  local amount = tonumber(parts[2]) or 0
  for k = 3, #parts do
    local owner, generation = string.match(parts[k], '^(.*)\31(.*)$')
    if owner then
      local bk = 'llmux:bud:' .. owner
      if redis.call('HGET', bk, 'g') == generation then
        redis.call('HINCRBYFLOAT', bk, 'r', -amount)
      end
    end
  end
end
"#;

const RELEASE: &str = r#"
-- ARGV: this instance's name; then extension count, and per extension: request id, delta,
-- budget count, and per budget: owner, max budget; then scope entry count, and per entry:
-- scope, window start, request id, tokens (0: none), holds a parallel slot (0/1); then budget
-- settlement count, and per settlement: request id, cost, owner count, owners.
-- Many requests' settlements go in one call, extensions first (a stream's extension is queued
-- before its settlement). Returns 1/0 per extension: whether every budget had room for it.
local held = 'llmux:held:' .. ARGV[1]
local at = 2
local fits = {}
local nx = tonumber(ARGV[at])
at = at + 1
for i = 1, nx do
  local id, delta, nb = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  at = at + 3
  local fit = 1
  for j = 0, nb - 1 do
    local got = redis.call('HMGET', 'llmux:bud:' .. ARGV[at + j * 2], 's', 'r')
    local s, r = tonumber(got[1] or '0'), math.max(tonumber(got[2] or '0'), 0)
    if s + r + delta > tonumber(ARGV[at + j * 2 + 1]) + 1e-12 then fit = 0 end
  end
  local entry = redis.call('HGET', held, id)
  -- Only a request still held grows (one already given back stays given back).
  if fit == 1 and entry then
    local since, amount, rest = string.match(entry, '^([^\30]*)\30([^\30]*)(.*)$')
    for part in string.gmatch(rest, '[^\30]+') do
      local owner, generation = string.match(part, '^(.*)\31(.*)$')
      local bk = 'llmux:bud:' .. owner
      if redis.call('HGET', bk, 'g') == generation then
        redis.call('HINCRBYFLOAT', bk, 'r', delta)
      end
    end
    redis.call('HSET', held, id, since .. '\30' .. string.format('%.17g', tonumber(amount) + delta) .. rest)
  end
  fits[#fits + 1] = fit
  at = at + nb * 2
end
-- Settlements are added up per counter first: one write per rate window, parallel-slot set and
-- budget, however many requests the call settles.
local n = tonumber(ARGV[at])
at = at + 1
local tokens_by_window, slots_by_scope = {}, {}
for i = 1, n do
  local scope, window, id, tokens, par = ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3]), ARGV[at + 4]
  at = at + 5
  if tokens > 0 then
    local w = 'llmux:rl:' .. scope .. ':' .. window
    tokens_by_window[w] = (tokens_by_window[w] or 0) + tokens
  end
  if par == '1' then
    local p = 'llmux:par:' .. scope
    slots_by_scope[p] = slots_by_scope[p] or {}
    table.insert(slots_by_scope[p], id)
  end
end
for w, tokens in pairs(tokens_by_window) do
  if redis.call('HINCRBY', w, 't', tokens) == tokens then redis.call('PEXPIRE', w, 120000) end
end
for p, ids in pairs(slots_by_scope) do
  redis.call('ZREM', p, unpack(ids))
end
local m = tonumber(ARGV[at])
at = at + 1
local ids, seen = {}, {}
local cost_by_owner = {}
for j = 1, m do
  local id, cost, no = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  at = at + 3
  if not seen[id] then
    seen[id] = true
    ids[#ids + 1] = id
  end
  -- The cost counts whether or not the reservation was still held.
  if cost > 0 then
    for k = 0, no - 1 do
      local owner = ARGV[at + k]
      cost_by_owner[owner] = (cost_by_owner[owner] or 0) + cost
    end
  end
  at = at + no
end
if #ids > 0 then
  -- Each request's held reservation is given back (once: a request no longer held, because a
  -- sweep or a reap gave it back, gives nothing).
  local entries = redis.call('HMGET', held, unpack(ids))
  local given, generation_of = {}, {}
  local present = {}
  for k, entry in ipairs(entries) do
    if entry then
      present[#present + 1] = ids[k]
      local parts = {}
      for part in string.gmatch(entry, '[^\30]+') do parts[#parts + 1] = part end
      local amount = tonumber(parts[2]) or 0
      for q = 3, #parts do
        local owner, generation = string.match(parts[q], '^(.*)\31(.*)$')
        if owner then
          if generation_of[owner] == nil then
            generation_of[owner] = redis.call('HGET', 'llmux:bud:' .. owner, 'g') or false
          end
          -- Only to the counter generation it was reserved in.
          if generation_of[owner] == generation then
            given[owner] = (given[owner] or 0) + amount
          end
        end
      end
    end
  end
  if #present > 0 then redis.call('HDEL', held, unpack(present)) end
  for owner, amount in pairs(given) do
    redis.call('HINCRBYFLOAT', 'llmux:bud:' .. owner, 'r', string.format('%.17g', -amount))
  end
end
-- Costs only where the counter exists (one Redis lost is rebuilt from the database).
for owner, cost in pairs(cost_by_owner) do
  local bk = 'llmux:bud:' .. owner
  if redis.call('EXISTS', bk) == 1 then
    redis.call('HINCRBYFLOAT', bk, 's', string.format('%.17g', cost))
    redis.call('PEXPIRE', bk, 86400000)
  end
end
return fits
"#;

const HEARTBEAT_AND_REAP: &str = r#"
-- ARGV: this instance's name, how long an instance may be silent (ms), and a time to use
-- instead of Redis's clock (0: Redis's, which every instance shares whatever its own says).
-- Says this instance is alive, and gives back everything held by instances silent longer.
local now = tonumber(ARGV[3])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('ZADD', 'llmux:alive', now, ARGV[1])
local reaped = 0
for _, other in ipairs(redis.call('ZRANGEBYSCORE', 'llmux:alive', '-inf', now - tonumber(ARGV[2]))) do
  local key = 'llmux:held:' .. other
  for _, entry in ipairs(redis.call('HVALS', key)) do
    release_held(entry)
    reaped = reaped + 1
  end
  redis.call('DEL', key)
  redis.call('ZREM', 'llmux:alive', other)
end
return reaped
"#;

const SWEEP: &str = r#"
-- ARGV: this instance's name, an admission time, then the ids of the requests this instance
-- still has in flight. Gives back what this instance holds for requests admitted before that
-- time that it no longer knows (an admission whose answer came too late, a lost settlement).
local key = 'llmux:held:' .. ARGV[1]
local cutoff = tonumber(ARGV[2])
local live = {}
for i = 3, #ARGV do live[ARGV[i]] = true end
local fields = redis.call('HGETALL', key)
local swept = 0
for k = 1, #fields, 2 do
  local id, entry = fields[k], fields[k + 1]
  local since = tonumber(string.match(entry, '^([^\30]*)'))
  if not live[id] and since and since < cutoff then
    release_held(entry)
    redis.call('HDEL', key, id)
    swept = swept + 1
  end
end
return swept
"#;

/// The channel object changes are announced on.
pub const INVALIDATE_CHANNEL: &str = "llmux:invalidate";

/// The Redis-backed state of a fleet: rate limits and budgets.
pub struct SharedState {
    /// This instance's name on the fleet's channel: it ignores its own announcements.
    instance: String,
    client: redis::Client,
    conn: ConnectionManager,
    acquire: redis::Script,
    release: redis::Script,
    /// How long the request path waits for Redis before counting locally.
    deadline: Duration,
    /// Redis is not answering: counting locally (logged once per outage).
    degraded: AtomicBool,
    /// Calls that fell back on local counting.
    pub fallbacks: AtomicU64,
    /// Settlements waiting to be sent: one call carries every one of the last few
    /// milliseconds, so a request costs one round trip on its path (its admission), not two.
    releases: std::sync::Mutex<Batch>,
    /// Admissions waiting to be sent: every request that arrives while a call is out goes in
    /// the next one (one script call, and one answer to read, for all of them).
    admissions: std::sync::Mutex<std::collections::VecDeque<PendingAdmission>>,
    admit: tokio::sync::Notify,
    /// Admission script calls sent (each carries one or more requests' admissions).
    pub admission_calls: AtomicU64,
    /// Requests admitted here with a budget reservation held in Redis, not yet settled.
    held: std::sync::Mutex<foldhash::HashSet<String>>,
    reap: redis::Script,
    sweep: redis::Script,
    flush: tokio::sync::Notify,
    /// A queued settlement frees a parallel slot or a budget reservation: send without waiting
    /// for the batch.
    urgent: AtomicBool,
}

/// One request's admission, queued for the admission sender.
struct PendingAdmission {
    /// Its arguments, as `ACQUIRE` reads one request's.
    args: Vec<Vec<u8>>,
    /// Its answer: the script's for this request.
    reply: tokio::sync::oneshot::Sender<Vec<String>>,
    /// What to give back if Redis admits it after its caller stopped waiting (it counted
    /// locally, or the client left): its parallel slots and budget reservation. `None` when it
    /// holds neither.
    undo: Option<Undo>,
}

/// A late admission's parallel slots and reservation (see `PendingAdmission::undo`).
struct Undo {
    request_id: String,
    scopes: Vec<Limits>,
    budgets: Vec<(Kind, String)>,
    started: i64,
}

#[derive(Default)]
struct Batch {
    extends: Vec<ExtendEntry>,
    scopes: Vec<ReleaseEntry>,
    budgets: Vec<BudgetSettle>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.extends.is_empty() && self.scopes.is_empty() && self.budgets.is_empty()
    }
}

/// A running stream asks to reserve more on its budgets; told whether they had room.
struct ExtendEntry {
    id: String,
    delta: f64,
    /// Owner, max budget.
    budgets: Vec<(String, f64)>,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// One scope's share of a finished request.
struct ReleaseEntry {
    scope: String,
    window: i64,
    id: String,
    tokens: u64,
    parallel: bool,
}

/// A finished request's budgets: its held reservation goes, its cost counts on each owner.
struct BudgetSettle {
    id: String,
    cost: f64,
    owners: Vec<String>,
}

/// What a finished request gives back and counts (see `SharedState::release`).
#[derive(Debug, Clone, Copy)]
pub struct Settlement<'a> {
    pub scopes: &'a [Limits],
    /// The owners of the budgets it counts against.
    pub budgets: &'a [(Kind, String)],
    pub request_id: &'a str,
    pub tokens: u64,
    pub cost: f64,
    /// Admission time (its rate windows).
    pub started: i64,
    /// A budget it counts against is near its end: send at once rather than with the batch.
    pub urgent: bool,
}

/// How often an instance reports its deployments' numbers to the fleet and reads the others'.
const STATS_SYNC: Duration = Duration::from_millis(500);
/// A report older than this no longer counts for requests in flight (its instance stopped).
const REPORT_FRESH_MS: i64 = 3_000;

/// The most admissions one call carries (the script unpacks their entries into one command's
/// arguments, and Redis's Lua stack holds a few thousand).
const ADMISSIONS_PER_CALL: usize = 256;

/// Admissions waiting for a call past which a new one counts locally at once (Redis has
/// stalled: at most `ADMISSION_CALLS_IN_FLIGHT` x `ADMISSIONS_PER_CALL` leave per call timeout).
const MAX_QUEUED_ADMISSIONS: usize = 4096;

/// Admission calls out at once: more admissions wait for one of them to answer and then go
/// together.
const ADMISSION_CALLS_IN_FLIGHT: usize = 4;

/// How long settlements gather before they are sent (and the most a tpm count lags behind the
/// request that used it).
const RELEASE_BATCH: Duration = Duration::from_millis(5);

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("degraded", &self.degraded)
            .finish()
    }
}

/// A shared call that could not be made (Redis slow or gone): count locally instead.
#[derive(Debug)]
pub struct Unavailable;

/// The fleet admitted a request: what its limits have left, and the least room (dollars) any
/// of its budgets had left before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub remaining: Remaining,
    pub budget_room: Option<f64>,
}

/// Why the fleet refused a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Budget(Exceeded),
    Limit(LimitExceeded),
}

/// A budget owner's name in Redis keys: `key:<hash>`, `team:<id>`, ...
pub fn owner_name(kind: Kind, id: &str) -> String {
    let kind = kind.as_str();
    let mut name = String::with_capacity(kind.len() + 1 + id.len());
    name.push_str(kind);
    name.push(':');
    name.push_str(id);
    name
}

/// Append a script argument as Redis will send it.
fn push_arg<T: redis::ToRedisArgs>(args: &mut Vec<Vec<u8>>, value: &T) {
    value.write_redis_args(args);
}

/// An amount of dollars as Redis and Lua read it (Rust never writes an exponent).
fn dollars(v: f64) -> String {
    if v.is_finite() {
        v.to_string()
    } else {
        "0".to_owned()
    }
}

impl SharedState {
    /// Connect to `url` (`redis://`, `rediss://` for TLS). The connection manager reconnects by
    /// itself after a loss.
    pub async fn connect(url: &str, deadline: Duration) -> Result<Arc<SharedState>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| "redis: no connection within 5 s".to_owned())?
        .map_err(|e| format!("redis: {e}"))?;
        let state = Arc::new(SharedState {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            client,
            conn,
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(&format!("{HELD}{RELEASE}")),
            deadline,
            degraded: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
            releases: std::sync::Mutex::new(Batch::default()),
            admissions: std::sync::Mutex::default(),
            admit: tokio::sync::Notify::new(),
            admission_calls: AtomicU64::new(0),
            held: std::sync::Mutex::default(),
            reap: redis::Script::new(&format!("{HELD}{HEARTBEAT_AND_REAP}")),
            sweep: redis::Script::new(&format!("{HELD}{SWEEP}")),
            flush: tokio::sync::Notify::new(),
            urgent: AtomicBool::new(false),
        });
        state.heartbeat().await;
        state.spawn_release_sender();
        state.spawn_admission_sender();
        state.spawn_heartbeat();
        Ok(state)
    }

    /// Say this instance is alive, and give back what instances silent for `DEAD_AFTER_MS`
    /// held (by Redis's clock, which every instance shares).
    async fn heartbeat(&self) {
        if self.reap_at(0).await.is_err() {
            tracing::debug!("redis heartbeat not sent");
        }
    }

    /// The heartbeat at `now` (unix ms; 0: Redis's clock): the number of reservations given
    /// back for instances that stopped.
    pub async fn reap_at(&self, now: i64) -> Result<i64, Unavailable> {
        let mut invocation = self.reap.prepare_invoke();
        invocation.arg(&self.instance).arg(DEAD_AFTER_MS).arg(now);
        let mut conn = self.conn.clone();
        match tokio::time::timeout(Duration::from_secs(2), invocation.invoke_async(&mut conn)).await
        {
            Ok(Ok(reaped)) => Ok(reaped),
            _ => Err(Unavailable),
        }
    }

    /// The requests this instance holds a budget reservation for (admitted, not settled).
    pub fn held_requests(&self) -> Vec<String> {
        self.held
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Give back what this instance holds in Redis for requests admitted before `cutoff` (unix
    /// ms) that are not in `live` (what it has in flight, `held_requests`): an admission whose
    /// answer came after its deadline, a settlement lost to a Redis error. The number given
    /// back.
    pub async fn sweep_before(&self, cutoff: i64, live: &[String]) -> Result<i64, Unavailable> {
        let mut invocation = self.sweep.prepare_invoke();
        invocation.arg(&self.instance).arg(cutoff);
        for id in live {
            invocation.arg(id);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(Duration::from_secs(5), invocation.invoke_async(&mut conn)).await
        {
            Ok(Ok(swept)) => Ok(swept),
            _ => Err(Unavailable),
        }
    }

    fn spawn_heartbeat(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut swept = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(state) = me.upgrade() else { return };
                state.heartbeat().await;
                if swept.elapsed() >= SWEEP_EVERY {
                    swept = tokio::time::Instant::now();
                    let live = state.held_requests();
                    let cutoff = llmux_store::now_ms() - SWEEP_AFTER_MS;
                    match state.sweep_before(cutoff, &live).await {
                        Ok(0) | Err(_) => {}
                        Ok(n) => tracing::info!(
                            requests = n,
                            "gave back budget reservations of requests this instance no longer has"
                        ),
                    }
                }
            }
        });
    }

    /// Announce a change to every instance (off the caller's path; a lost message leaves the
    /// other instances on their cached copy for at most the cache's 5 s).
    pub fn publish_invalidation(self: &Arc<Self>, message: String) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut conn = me.conn.clone();
            let sent = tokio::time::timeout(
                Duration::from_secs(2),
                redis::cmd("PUBLISH")
                    .arg(INVALIDATE_CHANNEL)
                    .arg(&message)
                    .query_async::<i64>(&mut conn),
            )
            .await;
            if !matches!(sent, Ok(Ok(_))) {
                tracing::warn!(change = %message, "could not announce a change to the fleet");
            }
        });
    }

    /// Tell the fleet this instance started cooling deployment `id` down for `duration`.
    pub fn publish_cooldown(self: &Arc<Self>, id: &str, duration: Duration) {
        self.publish_invalidation(format!(
            "cooldown:{}:{}:{id}",
            duration.as_millis(),
            self.instance
        ));
    }

    /// Tell the fleet this instance's probe found deployment `id` healthy again.
    pub fn publish_recovery(self: &Arc<Self>, id: &str) {
        self.publish_invalidation(format!("recovered:{}:{id}", self.instance));
    }

    /// Whether an announcement (`cooldown:` / `recovered:` body after its prefix) came from
    /// another instance; with the rest of it (the message without the instance's name).
    pub fn from_another<'m>(&self, rest: &'m str) -> Option<&'m str> {
        let (origin, rest) = rest.split_once(':')?;
        (origin != self.instance).then_some(rest)
    }

    /// Listen for the fleet's changes for as long as the process runs, calling `on_change` with
    /// each message; reconnects after a loss.
    pub fn listen(self: &Arc<Self>, on_change: impl Fn(&str) + Send + Sync + 'static) {
        let client = self.client.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(INVALIDATE_CHANNEL).await.is_ok() {
                            let mut messages = pubsub.on_message();
                            while let Some(m) = messages.next().await {
                                if let Ok(text) = m.get_payload::<String>() {
                                    on_change(&text);
                                }
                            }
                        }
                        tracing::warn!("lost the fleet's change channel; reconnecting");
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot subscribe to the fleet's changes")
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Whether the last call found Redis unavailable.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn note(&self, ok: bool, what: &str) {
        if ok {
            if self.degraded.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    "redis answers again: rate limits and budgets are shared across the fleet"
                );
            }
        } else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            if !self.degraded.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    call = what,
                    "redis is not answering: counting rate limits and budgets on this instance until it does"
                );
            }
        }
    }

    /// Run a call on the request path within the deadline; `Unavailable` past it or on error.
    async fn within_deadline<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(Ok(out)) => {
                self.note(true, what);
                Ok(out)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, call = what, "redis call failed");
                self.note(false, what);
                Err(Unavailable)
            }
            Err(_) => {
                self.note(false, what);
                Err(Unavailable)
            }
        }
    }

    /// Check every budget and count one request against every scope (one round trip),
    /// reserving `estimate` on each budget, or say which budget or limit refused it;
    /// `Err(Unavailable)` when Redis did not answer within the deadline.
    pub async fn acquire(
        &self,
        scopes: &[Limits],
        budgets: &[BudgetCheck],
        estimate: f64,
        request_id: &str,
        now: i64,
    ) -> Result<Result<Admitted, Refusal>, Unavailable> {
        let window = now - now.rem_euclid(WINDOW_MS);
        let reset_in_ms = window + WINDOW_MS - now;
        let limit = |v: Option<u64>| v.map_or(-1, |v| v.min(i64::MAX as u64) as i64);
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(8 + 4 * (scopes.len() + budgets.len()));
        push_arg(&mut args, &window);
        push_arg(&mut args, &now);
        push_arg(&mut args, &request_id);
        push_arg(&mut args, &IN_FLIGHT_TTL_MS);
        push_arg(&mut args, &scopes.len());
        for s in scopes {
            push_arg(&mut args, &s.scope);
            push_arg(&mut args, &limit(s.rpm));
            push_arg(&mut args, &limit(s.tpm));
            push_arg(&mut args, &limit(s.max_parallel));
        }
        push_arg(&mut args, &budgets.len());
        push_arg(&mut args, &dollars(estimate));
        push_arg(&mut args, &self.instance);
        for b in budgets {
            push_arg(&mut args, &owner_name(b.kind, &b.id));
            push_arg(&mut args, &dollars(b.max_budget));
            push_arg(&mut args, &dollars(b.stored_spend));
            push_arg(&mut args, &b.reset_at.unwrap_or(0));
        }
        let holds = !budgets.is_empty() || scopes.iter().any(|s| s.max_parallel.is_some());
        let undo = holds.then(|| Undo {
            request_id: request_id.to_owned(),
            scopes: scopes.to_vec(),
            budgets: budgets.iter().map(|b| (b.kind, b.id.clone())).collect(),
            started: now,
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut queue = self
                .admissions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Redis has stalled long enough for this many to wait: count locally at once
            // rather than queue without bound.
            if queue.len() >= MAX_QUEUED_ADMISSIONS {
                drop(queue);
                self.note(false, "acquire");
                return Err(Unavailable);
            }
            queue.push_back(PendingAdmission { args, reply, undo });
        }
        self.admit.notify_one();
        let answered = tokio::time::timeout(self.deadline, answer).await;
        // `E`: the script failed for this request.
        let Some(out) = answered
            .ok()
            .and_then(Result::ok)
            .filter(|out| out.first().is_some_and(|first| first != "E"))
        else {
            // The call failed, did not answer in time, or failed for this request. A call
            // still queued is not sent, and one answered too late gives back what it took
            // (`send_admissions`); these slots are freed here in case it ran without answering.
            // Its rpm count stays (see the module notes).
            self.note(false, "acquire");
            self.forget_slots(scopes, request_id, window);
            return Err(Unavailable);
        };
        self.note(true, "acquire");
        let int = |i: usize| out.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let number = |i: usize| {
            out.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        match out.first().map(String::as_str) {
            Some("0") => {
                let mut remaining = Remaining {
                    reset_in_ms,
                    ..Remaining::default()
                };
                for (i, s) in scopes.iter().enumerate() {
                    let requests = int(1 + 2 * i).max(0) as u64;
                    let tokens = int(2 + 2 * i).max(0) as u64;
                    if let Some(rpm) = s.rpm {
                        let left = rpm.saturating_sub(requests);
                        if remaining.requests.is_none_or(|(_, l)| left < l) {
                            remaining.requests = Some((rpm, left));
                        }
                    }
                    if let Some(tpm) = s.tpm {
                        let left = tpm.saturating_sub(tokens);
                        if remaining.tokens.is_none_or(|(_, l)| left < l) {
                            remaining.tokens = Some((tpm, left));
                        }
                    }
                }
                let at = 1 + 2 * scopes.len();
                let budget_room = (!budgets.is_empty())
                    .then(|| out.get(at)?.parse::<f64>().ok())
                    .flatten();
                if !budgets.is_empty() {
                    if let Ok(mut held) = self.held.lock() {
                        held.insert(request_id.to_owned());
                    }
                }
                Ok(Ok(Admitted {
                    remaining,
                    budget_room,
                }))
            }
            Some(_) => {
                let at = (int(0) - 1).max(0) as usize;
                if int(1) == 4 {
                    let Some(b) = budgets.get(at) else {
                        return Err(Unavailable);
                    };
                    return Ok(Err(Refusal::Budget(Exceeded {
                        kind: b.kind,
                        id: b.id.clone(),
                        max_budget: b.max_budget,
                        current: number(2),
                    })));
                }
                let scope = scopes.get(at).map(|s| s.scope.clone()).unwrap_or_default();
                let (what, reset) = match int(1) {
                    1 => ("requests", reset_in_ms),
                    2 => ("tokens", reset_in_ms),
                    _ => ("parallel_requests", 0),
                };
                Ok(Err(Refusal::Limit(LimitExceeded {
                    scope,
                    what,
                    limit: int(2).max(0) as u64,
                    reset_in_ms: reset,
                })))
            }
            None => Err(Unavailable),
        }
    }

    /// The request is over: count its tokens, free its parallel slots, give back its budget
    /// reservations and count its cost. Queued for the release sender (off the request path);
    /// a failure is logged, slots expire with `IN_FLIGHT_TTL_MS`, and a reservation whose
    /// settlement was lost is given back by this instance's next sweep.
    pub fn release(self: &Arc<Self>, settled: Settlement<'_>) {
        // Tokens count in the window the request was admitted in, as the local limiter does.
        let window = settled.started - settled.started.rem_euclid(WINDOW_MS);
        let mut queue = self
            .releases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was_empty = queue.is_empty();
        if !settled.budgets.is_empty() {
            if let Ok(mut held) = self.held.lock() {
                held.remove(settled.request_id);
            }
        }
        for s in settled.scopes {
            let tokens = if s.tpm.is_some() { settled.tokens } else { 0 };
            let parallel = s.max_parallel.is_some();
            if tokens > 0 || parallel {
                queue.scopes.push(ReleaseEntry {
                    scope: s.scope.clone(),
                    window,
                    id: settled.request_id.to_owned(),
                    tokens,
                    parallel,
                });
            }
        }
        if !settled.budgets.is_empty() {
            queue.budgets.push(BudgetSettle {
                id: settled.request_id.to_owned(),
                cost: settled.cost,
                owners: settled
                    .budgets
                    .iter()
                    .map(|(kind, id)| owner_name(*kind, id))
                    .collect(),
            });
        }
        // A parallel slot, or a budget's reservation near its end, is freed at once (a client
        // sending its next request right after an answer must find it free, and the spend
        // counted); token counts and roomy budgets may wait for the next batch.
        let urgent = (settled.urgent && !settled.budgets.is_empty())
            || settled.scopes.iter().any(|s| s.max_parallel.is_some());
        if (was_empty && !queue.is_empty()) || urgent {
            drop(queue);
            if urgent {
                self.urgent.store(true, Ordering::Release);
            }
            self.flush.notify_one();
        }
    }

    /// Queue the removal of `request_id`'s parallel slots (an admission that timed out).
    fn forget_slots(&self, scopes: &[Limits], request_id: &str, window: i64) {
        let mut queue = self
            .releases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in scopes.iter().filter(|s| s.max_parallel.is_some()) {
            queue.scopes.push(ReleaseEntry {
                scope: s.scope.clone(),
                window,
                id: request_id.to_owned(),
                tokens: 0,
                parallel: true,
            });
        }
        drop(queue);
        self.flush.notify_one();
    }

    /// Grow a running request's reservation by `delta` on every budget (owner, max budget) if
    /// each has room for it fleet-wide: `Ok(true)` if it did, `Ok(false)` if one
    /// has no room. Queued with the settlements before the call returns and sent ahead of them,
    /// so it never lands after its own request's settlement.
    pub fn extend(
        &self,
        budgets: &[((Kind, String), f64)],
        request_id: &str,
        delta: f64,
    ) -> impl std::future::Future<Output = Result<bool, Unavailable>> + Send + 'static {
        // Queued now, before the caller can settle the request; only the answer is awaited.
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut queue = self
                .releases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.extends.push(ExtendEntry {
                id: request_id.to_owned(),
                delta,
                budgets: budgets
                    .iter()
                    .map(|((kind, id), max)| (owner_name(*kind, id), *max))
                    .collect(),
                reply,
            });
        }
        self.urgent.store(true, Ordering::Release);
        self.flush.notify_one();
        async move {
            match tokio::time::timeout(Duration::from_secs(2), answer).await {
                Ok(Ok(fit)) => Ok(fit),
                _ => Err(Unavailable),
            }
        }
    }

    /// The fleet's spend and reservations of each owner, `None` for an owner Redis does not
    /// track (its spend is the database's). After a period ended, and before the database was
    /// reset, the spend counts from the end. Reservations are reported as stored (callers clamp
    /// them at zero; tests see a bookkeeping error).
    pub async fn spend(
        &self,
        owners: &[(Kind, String)],
    ) -> Result<Vec<Option<(f64, f64)>>, Unavailable> {
        let mut pipe = redis::pipe();
        for (kind, id) in owners {
            pipe.cmd("HMGET")
                .arg(format!("llmux:bud:{}", owner_name(*kind, id)))
                .arg("s")
                .arg("r")
                .arg("e");
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(Option<f64>, Option<f64>, Option<String>)> = self
            .within_deadline("spend", pipe.query_async(&mut conn))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(s, r, _ended)| {
                // After a period ended (`e`), `s` was zeroed and counts what came after.
                Some((s?, r.unwrap_or(0.0)))
            })
            .collect())
    }

    /// An administrator set an owner's spend, or its period was reset: the fleet's counter
    /// starts from `spend` (reservations in flight stay).
    pub async fn set_spend(&self, kind: Kind, id: &str, spend: f64, period_end: Option<i64>) {
        let mut conn = self.conn.clone();
        let key = format!("llmux:bud:{}", owner_name(kind, id));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("s")
            .arg(dollars(spend))
            .arg("p")
            .arg(period_end.unwrap_or(0))
            .arg("e")
            .arg("0")
            .ignore()
            // A counter this creates is a new generation, and expires when idle like the others.
            .cmd("HSETNX")
            .arg(&key)
            .arg("g")
            .arg(format!("{}:set", llmux::new_request_id()))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(86_400_000)
            .ignore();
        let set = pipe.query_async::<()>(&mut conn);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(2), set).await,
            Ok(Ok(()))
        ) {
            tracing::warn!(
                kind = kind.as_str(),
                "could not set a budget's spend in redis; it follows the database once the counter expires"
            );
        }
    }

    /// An owner was deleted: drop its counters.
    pub async fn forget(&self, kind: Kind, id: &str) {
        let name = owner_name(kind, id);
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("DEL");
        command.arg(format!("llmux:bud:{name}"));
        let deleted = command.query_async::<i64>(&mut conn);
        let _ = tokio::time::timeout(Duration::from_secs(2), deleted).await;
    }

    /// Send every queued settlement now (a graceful stop: parallel slots and reservations must
    /// not wait for their expiry).
    pub async fn flush_now(&self) {
        let batch = std::mem::take(
            &mut *self
                .releases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.send(batch).await;
    }

    /// Send queued admissions for as long as the state lives: whatever is queued goes at once
    /// in one call, without a timer. Up to `ADMISSION_CALLS_IN_FLIGHT` calls are out at a time
    /// (pipelined on the connection); while they all are, arriving admissions queue and go
    /// together in the next, so under load a call carries many and at low load none waits.
    fn spawn_admission_sender(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(ADMISSION_CALLS_IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    return;
                };
                let Some(state) = me.upgrade() else { return };
                let batch: Vec<PendingAdmission> = {
                    let mut queue = state
                        .admissions
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let take = queue.len().min(ADMISSIONS_PER_CALL);
                    // Requests that stopped waiting (they counted locally, or the client left)
                    // are not sent.
                    queue
                        .drain(..take)
                        .filter(|p| !p.reply.is_closed())
                        .collect()
                };
                if batch.is_empty() {
                    // Woken by the next admission (`notify_one` keeps the wake-up for a waiter
                    // that comes later), or every second to see whether the state is still used.
                    drop(permit);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), state.admit.notified()).await;
                    continue;
                }
                tokio::spawn(async move {
                    state.send_admissions(batch).await;
                    drop(permit);
                });
            }
        });
    }

    /// One call for `batch`; each request gets its own answer (none when the call failed: it
    /// counts locally).
    async fn send_admissions(self: &Arc<Self>, batch: Vec<PendingAdmission>) {
        let mut invocation = self.acquire.prepare_invoke();
        invocation.arg(batch.len());
        for pending in &batch {
            invocation.arg(pending.args.len());
            for a in &pending.args {
                invocation.arg(a.as_slice());
            }
        }
        self.admission_calls.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let call = invocation.invoke_async::<Vec<String>>(&mut conn);
        let answers = match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(answers)) => answers,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis admission call failed");
                return;
            }
            Err(_) => return,
        };
        // Each request's answer is its length, then itself; a layout that does not add up
        // answers no one (each counts locally).
        let mut spans = Vec::with_capacity(batch.len());
        let mut at = 0;
        for _ in &batch {
            let Some(len) = answers.get(at).and_then(|n| n.parse::<usize>().ok()) else {
                return;
            };
            spans.push((at + 1, at + 1 + len));
            at += 1 + len;
        }
        if at != answers.len() {
            return;
        }
        for (pending, (from, to)) in batch.into_iter().zip(spans) {
            let answer = answers[from..to].to_vec();
            let admitted = answer.first().is_some_and(|a| a == "0");
            // A request that stopped waiting after the call went out: give back what Redis
            // just gave it.
            if pending.reply.send(answer).is_err() && admitted {
                if let Some(undo) = pending.undo {
                    self.release(Settlement {
                        scopes: &undo.scopes,
                        budgets: &undo.budgets,
                        request_id: &undo.request_id,
                        tokens: 0,
                        cost: 0.0,
                        started: undo.started,
                        urgent: true,
                    });
                }
            }
        }
    }

    /// Send queued settlements, a batch every `RELEASE_BATCH`, for as long as the state lives.
    fn spawn_release_sender(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(state) = me.upgrade() else { return };
                let notified = state.flush.notified();
                let empty = state.releases.lock().map(|q| q.is_empty()).unwrap_or(true);
                if empty {
                    // Woken by the first settlement queued, or every second to see whether the
                    // state is still used.
                    let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                    continue;
                }
                if !state.urgent.swap(false, Ordering::AcqRel) {
                    tokio::time::sleep(RELEASE_BATCH).await;
                }
                let batch = std::mem::take(
                    &mut *state
                        .releases
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                state.send(batch).await;
            }
        });
    }

    /// Share the router's per-deployment state with the fleet for as long as this lives: every
    /// `STATS_SYNC`, report each deployment's usage this minute, requests in flight and latency
    /// means (one pipelined call for all of them), and hand what the other instances reported to
    /// the deployment's stats, which usage-, latency- and least-busy routing read. Off the
    /// request path; while Redis does not answer, each instance routes on its own numbers.
    pub fn share_router_stats(
        self: &Arc<Self>,
        deployments: impl Fn() -> Vec<(String, Arc<DeploymentStats>)> + Send + 'static,
    ) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_SYNC);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = me.upgrade() else { return };
                let deployments = deployments();
                if !deployments.is_empty() {
                    state.sync_router_stats(&deployments).await;
                }
            }
        });
    }

    /// One exchange of router state with the fleet (see `share_router_stats`).
    pub async fn sync_router_stats(&self, deployments: &[(String, Arc<DeploymentStats>)]) {
        let now = llmux_store::now_ms();
        let reports: Vec<LocalReport> = deployments.iter().map(|(_, s)| s.local_report()).collect();
        let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        let mut pipe = redis::pipe();
        for ((id, _), r) in deployments.iter().zip(&reports) {
            let key = format!("llmux:dep:{id}:{}", r.minute);
            pipe.cmd("HSET")
                .arg(&key)
                .arg(&self.instance)
                .arg(format!(
                    "{now} {} {} {} {} {}",
                    r.requests,
                    r.tokens,
                    r.in_flight,
                    number(r.per_token_ms),
                    number(r.ttft_ms)
                ))
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(120_000).ignore();
            pipe.cmd("HGETALL").arg(&key);
        }
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            pipe.query_async::<Vec<std::collections::HashMap<String, String>>>(&mut conn),
        )
        .await;
        let Ok(Ok(rows)) = answer else {
            // Routing falls back on this instance's own numbers: stale counts of the others
            // (requests in flight above all) must not keep steering it.
            for (_, stats) in deployments {
                stats.set_fleet(FleetReport::default());
            }
            return;
        };
        for (((_, stats), mine), row) in deployments.iter().zip(&reports).zip(rows) {
            stats.set_fleet(fleet_report(mine.minute, &self.instance, &row, now));
        }
    }

    async fn send(&self, batch: Batch) {
        const PER_CALL: usize = 500;
        let Batch {
            extends,
            scopes,
            budgets,
        } = batch;
        let mut extends = extends.into_iter().peekable();
        let mut scopes = scopes.chunks(PER_CALL);
        let mut budgets = budgets.chunks(PER_CALL);
        loop {
            let mut replies = Vec::new();
            while replies.len() < PER_CALL {
                match extends.next() {
                    Some(e) => replies.push(e),
                    None => break,
                }
            }
            // Settlements only once every extension is sent (one may be their request's).
            let (s, b) = if extends.peek().is_some() {
                (&[][..], &[][..])
            } else {
                (scopes.next().unwrap_or(&[]), budgets.next().unwrap_or(&[]))
            };
            if replies.is_empty() && s.is_empty() && b.is_empty() {
                return;
            }
            let mut invocation = self.release.prepare_invoke();
            invocation.arg(&self.instance).arg(replies.len());
            for e in &replies {
                invocation
                    .arg(&e.id)
                    .arg(dollars(e.delta))
                    .arg(e.budgets.len());
                for (owner, max) in &e.budgets {
                    invocation.arg(owner).arg(dollars(*max));
                }
            }
            invocation.arg(s.len());
            for e in s {
                invocation
                    .arg(&e.scope)
                    .arg(e.window)
                    .arg(&e.id)
                    .arg(e.tokens)
                    .arg(if e.parallel { "1" } else { "0" });
            }
            invocation.arg(b.len());
            for e in b {
                invocation
                    .arg(&e.id)
                    .arg(dollars(e.cost))
                    .arg(e.owners.len());
                for owner in &e.owners {
                    invocation.arg(owner);
                }
            }
            let mut conn = self.conn.clone();
            let done = tokio::time::timeout(
                Duration::from_secs(2),
                invocation.invoke_async::<Vec<i64>>(&mut conn),
            )
            .await;
            self.note(matches!(done, Ok(Ok(_))), "release");
            if let Ok(Ok(fits)) = done {
                for (e, fit) in replies.into_iter().zip(fits) {
                    let _ = e.reply.send(fit == 1);
                }
            }
        }
    }
}

/// Sum (usage, fresh in-flight counts) and average (latency means) what the other instances
/// reported in `row` (instance -> `unix_ms requests tokens in_flight per_token_ms ttft_ms`,
/// `-` for a mean without data).
fn fleet_report(
    minute: u64,
    me: &str,
    row: &std::collections::HashMap<String, String>,
    now: i64,
) -> FleetReport {
    let mut report = FleetReport {
        minute,
        ..FleetReport::default()
    };
    let (mut per_token, mut ttft) = ((0.0, 0u64), (0.0, 0u64));
    for (instance, value) in row {
        if instance == me {
            continue;
        }
        let fields: Vec<&str> = value.split(' ').collect();
        let [at, requests, tokens, in_flight, pt, ft] = fields[..] else {
            continue;
        };
        let int = |v: &str| v.parse::<u64>().unwrap_or(0);
        report.requests += int(requests);
        report.tokens += int(tokens);
        if now - at.parse::<i64>().unwrap_or(0) <= REPORT_FRESH_MS {
            report.in_flight += int(in_flight);
        }
        if let Ok(v) = pt.parse::<f64>() {
            per_token = (per_token.0 + v, per_token.1 + 1);
        }
        if let Ok(v) = ft.parse::<f64>() {
            ttft = (ttft.0 + v, ttft.1 + 1);
        }
    }
    let mean = |(sum, n): (f64, u64)| (n > 0).then(|| sum / n as f64);
    report.per_token_ms = mean(per_token);
    report.ttft_ms = mean(ttft);
    report.latency_reporters = per_token.1.max(ttft.1);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_report_sums_the_others_and_skips_stale_in_flight_counts() {
        let row: std::collections::HashMap<String, String> = [
            ("me", "1000 9 900 9 1.0 2.0"),
            ("a", "1000 3 300 2 10.0 -"),
            ("b", "-5000 4 400 5 20.0 100.0"),
            ("broken", "1000 nonsense"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = fleet_report(7, "me", &row, 1500);
        assert_eq!((r.minute, r.requests, r.tokens), (7, 7, 700));
        assert_eq!(
            r.in_flight, 2,
            "b's report is 6.5 s old: its instance stopped"
        );
        assert_eq!(r.per_token_ms, Some(15.0));
        assert_eq!(r.ttft_ms, Some(100.0));
        assert_eq!(r.latency_reporters, 2);
    }
}
