//! The Lua scripts of the Redis store: each is one atomic step on the server, so a check and
//! the write it guards (a fencing epoch and an append, a lease and its renewal) never
//! interleave with another replica's. Key layout: `docs/stores.md`. Leases are stored as
//! `OWNER\nINCARNATION\nEPOCH` with a `PX` expiry: the server's clock decides when they end.

/// Updates fields of a record that exists. ARGV: triples of field, `1`/`0` (set/delete), value.
pub(super) const UPDATE_FIELDS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 3 do
  if ARGV[i + 1] == '1' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  else redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 1
";

/// Adds activity. KEYS: record, active index. ARGV: id, last_active, requests, tool_calls.
pub(super) const TOUCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_active') or '0')
local now = tonumber(ARGV[2])
if now > last then
  redis.call('HSET', KEYS[1], 'last_active', ARGV[2])
  if redis.call('HEXISTS', KEYS[1], 'closed_at') == 0 then redis.call('ZADD', KEYS[2], now, ARGV[1]) end
end
redis.call('HINCRBY', KEYS[1], 'requests', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'tool_calls', ARGV[4])
return 1
";

/// Closes a record once (the first close wins) and lets it expire. KEYS: record, open index,
/// closed index, active index. ARGV: id, closed_at, reason, expiry ms.
pub(super) const CLOSE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'closed_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'closed_at', ARGV[2], 'close_reason', ARGV[3])
local m = redis.call('HGET', KEYS[1], 'order')
redis.call('ZREM', KEYS[2], m)
redis.call('ZADD', KEYS[3], 0, m)
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Appends one event, optionally fenced and evicting another stream; bounds the stream and
/// raises its floor; publishes a wake-up. KEYS: events, floors, streams, sessions-with-events,
/// evicted events, lease. ARGV: seq, member, stream, session, channel, evicted stream or '',
/// per-stream bound, epoch or ''. Returns 0 when fenced.
pub(super) const APPEND: &str = r"
if ARGV[8] ~= '' then
  local l = redis.call('GET', KEYS[6])
  if not l then return 0 end
  if string.match(l, '([^\n]*)$') ~= ARGV[8] then return 0 end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
local max = tonumber(ARGV[7])
local n = redis.call('ZCARD', KEYS[1])
if n > max then
  local top = redis.call('ZRANGE', KEYS[1], n - max - 1, n - max - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1)
  local f = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
  if tonumber(top[2]) > f then redis.call('HSET', KEYS[2], ARGV[3], string.format('%.0f', tonumber(top[2]))) end
end
if ARGV[6] ~= '' then
  redis.call('DEL', KEYS[5])
  redis.call('HDEL', KEYS[2], ARGV[6])
  redis.call('SREM', KEYS[3], ARGV[6])
end
redis.call('PUBLISH', ARGV[5], ARGV[4] .. ' ' .. ARGV[3])
return 1
";

/// Events after a cursor. KEYS: events, floors. ARGV: stream, after, limit. Returns
/// `{'gone'}` or `{'ok', member...}`.
pub(super) const REPLAY: &str = r"
local f = redis.call('HGET', KEYS[2], ARGV[1])
if f and tonumber(ARGV[2]) < tonumber(f) then return {'gone'} end
local ev = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
if #ev == 0 and not f and redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
table.insert(ev, 1, 'ok')
return ev
";

/// Drops a session's events beyond retention, raising floors. KEYS: streams, floors.
/// ARGV: events key prefix (plus stream), cutoff ms, per-stream bound. Returns how many.
pub(super) const PRUNE_SESSION: &str = r"
local dropped = 0
local cutoff = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
for _, st in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. st
  local floor = nil
  while true do
    local h = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if #h == 0 then break end
    local created = tonumber(string.match(h[1], '^%d+:(%d+):'))
    if created >= cutoff then break end
    redis.call('ZREMRANGEBYRANK', k, 0, 0)
    floor = tonumber(h[2])
    dropped = dropped + 1
  end
  local n = redis.call('ZCARD', k)
  if n > cap then
    local top = redis.call('ZRANGE', k, n - cap - 1, n - cap - 1, 'WITHSCORES')
    redis.call('ZREMRANGEBYRANK', k, 0, n - cap - 1)
    floor = tonumber(top[2])
    dropped = dropped + n - cap
  end
  if floor then
    local f = tonumber(redis.call('HGET', KEYS[2], st) or '0')
    if floor > f then redis.call('HSET', KEYS[2], st, string.format('%.0f', floor)) end
  end
end
return dropped
";

/// Drops every event of a session. KEYS: streams, floors, sessions-with-events. ARGV: events
/// key prefix, session.
pub(super) const FORGET: &str = r"
for _, st in ipairs(redis.call('SMEMBERS', KEYS[1])) do redis.call('DEL', ARGV[1] .. st) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
";

/// Claims a lease. KEYS: lease, epoch counter, the claimer's held set. ARGV: owner,
/// incarnation, ttl ms, session. Returns `{'won', epoch}` or `{'held', owner, inc, epoch, pttl}`.
pub(super) const CLAIM: &str = r"
local l = redis.call('GET', KEYS[1])
if l then
  local o, i, e = string.match(l, '^([^\n]*)\n([^\n]*)\n([^\n]*)$')
  if o == ARGV[1] and i == ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    redis.call('SADD', KEYS[3], ARGV[4])
    return {'won', e}
  end
  return {'held', o, i, e, tostring(redis.call('PTTL', KEYS[1]))}
end
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. ARGV[2] .. '\n' .. e, 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return {'won', tostring(e)}
";

/// Renews every live lease of a replica. KEYS: its held set. ARGV: owner, incarnation, ttl
/// ms, lease key prefix. Forgets the ones it lost; returns the sessions still held.
pub(super) const RENEW_ALL: &str = r"
local mine = ARGV[1] .. '\n' .. ARGV[2] .. '\n'
local held = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[4] .. sid
  local l = redis.call('GET', k)
  if l and string.sub(l, 1, #mine) == mine then
    redis.call('PEXPIRE', k, ARGV[3])
    table.insert(held, sid)
  else
    redis.call('SREM', KEYS[1], sid)
  end
end
return held
";

/// Releases one lease if the caller holds it. KEYS: lease, held set. ARGV: owner,
/// incarnation, session.
pub(super) const RELEASE: &str = r"
local mine = ARGV[1] .. '\n' .. ARGV[2] .. '\n'
redis.call('SREM', KEYS[2], ARGV[3])
local l = redis.call('GET', KEYS[1])
if l and string.sub(l, 1, #mine) == mine then redis.call('DEL', KEYS[1]) return 1 end
return 0
";

/// Releases every lease of a replica. KEYS: held set. ARGV: owner, incarnation, lease key
/// prefix. Returns how many.
pub(super) const RELEASE_ALL: &str = r"
local mine = ARGV[1] .. '\n' .. ARGV[2] .. '\n'
local n = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local l = redis.call('GET', ARGV[3] .. sid)
  if l and string.sub(l, 1, #mine) == mine then redis.call('DEL', ARGV[3] .. sid) n = n + 1 end
end
redis.call('DEL', KEYS[1])
return n
";

/// A lease and its time left. KEYS: lease. Returns `{}` or `{value, pttl}`.
pub(super) const LEASE: &str = r"
local l = redis.call('GET', KEYS[1])
if not l then return {} end
return {l, tostring(redis.call('PTTL', KEYS[1]))}
";

/// Sets a record's state if the epoch is the live lease's. KEYS: record, lease. ARGV: state,
/// epoch. Returns 0 when fenced.
pub(super) const SET_STATE_FENCED: &str = r"
local l = redis.call('GET', KEYS[2])
if not l or string.match(l, '([^\n]*)$') ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'state', ARGV[1]) end
return 1
";

/// The server's clock in ms.
const NOW_MS: &str = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)";

/// Registers a replica. KEYS: registry. ARGV: id, incarnation, address.
pub(super) fn register() -> String {
    format!(
        "{NOW_MS}
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\\n' .. ARGV[3] .. '\\n' .. string.format('%.0f', now))
return 1"
    )
}

/// Refreshes a heartbeat if the incarnation matches. KEYS: registry. ARGV: id, incarnation.
pub(super) fn heartbeat() -> String {
    format!(
        "{NOW_MS}
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local i, a = string.match(v, '^([^\\n]*)\\n([^\\n]*)\\n')
if i ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], i .. '\\n' .. a .. '\\n' .. string.format('%.0f', now))
return 1"
    )
}

/// Every replica with its heartbeat age. KEYS: registry. Returns `{id, value, age}...`.
pub(super) fn replicas() -> String {
    format!(
        "{NOW_MS}
local out = {{}}
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local at = tonumber(string.match(all[j + 1], '([^\\n]*)$'))
  table.insert(out, all[j]) table.insert(out, all[j + 1]) table.insert(out, string.format('%.0f', now - at))
end
return out"
    )
}

/// Removes a replica if the incarnation matches. KEYS: registry. ARGV: id, incarnation.
pub(super) const DEREGISTER: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, #ARGV[2] + 1) == ARGV[2] .. '\n' then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
";
