#!lua name=pushgate
-- pushgate's channel engine in Redis: one function call per publish, per subscribe
-- (attach), per fetch, per unsubscribe (detach). Every key of a channel shares its hash
-- tag `{<channel>}` (see keys.rs), so Redis Cluster never sees a cross-slot call.
--
--   KEYS[1] <p>:{c}:m  meta hash: e epoch, r replid of the history that wrote it, s last seq,
--                      b retained bytes, o owner ("incarnation:sub_id:worker"), ot owner token
--   KEYS[2] <p>:{c}:s  stream; entry id "<seq>-0", fields d data, t ms, [k key], [o op]
--   KEYS[3] <p>:{c}:i:<key>  publish only: "epoch:seq" of an idempotency key
--
-- The meta outlives the messages (its TTL is --channel-meta-secs, the stream's the
-- retention age), so an idle channel's seq goes on and a late resume gets a gap.

local OVERHEAD = 64          -- bytes accounted per message besides data and key
local ENTRY_OVERHEAD = 12    -- link frame bytes per backlog message besides its data

-- This node's replication ids: its own history, and the one it was a replica of before a
-- promotion (zeros when none).
local function replids()
  local info = redis.call('INFO', 'replication')
  return string.match(info, 'master_replid:(%w+)') or '',
    string.match(info, 'master_replid2:(%w+)') or ''
end

local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

local function cost(fields)
  local n = OVERHEAD
  for i = 1, #fields, 2 do
    if fields[i] == 'd' or fields[i] == 'k' then n = n + #fields[i + 1] end
  end
  return n
end

-- Makes sure the meta exists and was written by this Redis history. Returns
-- (epoch, cause): cause '' (unchanged), 'missing' (no meta: new, expired, flushed,
-- evicted, restarted without persistence) or 'replid' (another history: a failover to a
-- replica, or, with `strict`, a restart from a snapshot; acknowledged writes may be gone).
--
-- `strict` (one node): any other replid than this node's is another history. In a
-- cluster keys also move between masters (a reshard moves them with their `r`), so only
-- the history this node was promoted from (`master_replid2`) counts as lost, and a key
-- that came from another master adopts this node's id.
local function ensure_meta(meta, stream, new_epoch, meta_ttl, strict)
  local cur = redis.call('HMGET', meta, 'e', 'r')
  local id, id2 = replids()
  local epoch, cause = cur[1], ''
  if not epoch then
    -- A stream left without its meta must not be inherited by the new history.
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', new_epoch, 'r', id, 's', 0, 'b', 0)
    epoch, cause = new_epoch, 'missing'
  elseif cur[2] ~= id then
    if strict == '1' or cur[2] == id2 then
      redis.call('HSET', meta, 'e', new_epoch, 'r', id)
      epoch, cause = new_epoch, 'replid'
    else
      redis.call('HSET', meta, 'r', id)
    end
  end
  redis.call('PEXPIRE', meta, meta_ttl)
  return epoch, cause
end

-- Drops the oldest entries while over count or bytes, or older than `oldest_ok`; at most
-- `limit` per call (each publish adds one; reads skip expired entries anyway).
local function trim(meta, stream, max_messages, max_bytes, oldest_ok, limit)
  local len = redis.call('XLEN', stream)
  local bytes = tonumber(redis.call('HGET', meta, 'b') or '0')
  local dropped = 0
  while len > 0 and dropped < limit do
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    if len > max_messages or bytes > max_bytes or tonumber(field(first[2], 't')) < oldest_ok then
      redis.call('XDEL', stream, first[1])
      bytes = bytes - cost(first[2])
      len = len - 1
      dropped = dropped + 1
    else
      break
    end
  end
  if bytes < 0 or len == 0 then bytes = 0 end
  redis.call('HSET', meta, 'b', bytes)
  return dropped
end

-- One page of what a subscriber resuming after `since` (having seen `client_epoch`, ''
-- if it did not say) gets, with the gap rules of the memory store (memory/log.rs):
-- gap when the epoch differs, `since` is beyond the last seq, or messages between `since`
-- and the oldest retained are gone; then everything retained is wanted. The oldest wanted
-- messages that fit `max_bytes` of payload (and `max_frame` link bytes), at least one.
-- Returns {gap 0|1, first_seq, last_seq, seq1, data1, seq2, data2, ...}.
local function page(meta, stream, epoch, since, client_epoch, max_bytes, max_frame, oldest_ok)
  local last = tonumber(redis.call('HGET', meta, 's') or '0')
  local first = last + 1
  for _, e in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', 32)) do
    if tonumber(field(e[2], 't')) >= oldest_ok then
      first = seq_of(e[1])
      break
    end
  end
  local gap = (client_epoch ~= '' and client_epoch ~= tostring(epoch))
    or since > last or since + 1 < first
  local out = {gap and 1 or 0, first, last}
  local from = gap and first or since + 1
  if from > last then return out end
  local payload, frame = 0, 0
  for _, e in ipairs(redis.call('XRANGE', stream, from .. '-0', '+')) do
    if tonumber(field(e[2], 't')) >= oldest_ok then
      local d = field(e[2], 'd')
      payload = payload + #d
      frame = frame + #d + ENTRY_OVERHEAD
      if #out > 3 and (payload > max_bytes or frame > max_frame) then break end
      table.insert(out, seq_of(e[1]))
      table.insert(out, d)
    end
  end
  return out
end

-- ARGV: data, now_ms, max_messages, max_age_ms, max_channel_bytes, meta_ttl_ms, new_epoch,
--       op (unique per publish call), key ('' = none), strict
-- Returns {seq, epoch, duplicate 0|1, owner or '', epoch cause, evicted}.
local function publish(keys, args)
  local meta, stream = keys[1], keys[2]
  local data, now, max_messages, max_age = args[1], tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  local max_bytes, meta_ttl, new_epoch, op, key = tonumber(args[5]), tonumber(args[6]), args[7], args[8], args[9]
  local epoch, cause = ensure_meta(meta, stream, new_epoch, meta_ttl, args[10])
  local owner = redis.call('HGET', meta, 'o') or ''
  if key ~= '' then
    local seen = redis.call('GET', keys[3])
    if seen then
      local e, s = string.match(seen, '^(%d+):(%d+)$')
      if e == tostring(epoch) then return {tonumber(s), epoch, 1, owner, cause, 0} end
    end
  end
  -- A client library that re-sends this very call after a dropped connection (the
  -- cluster client does, on the same retry budget it uses for MOVED/ASK) must not give
  -- the message a second seq: the op id of each publish is kept in its entry.
  for _, e in ipairs(redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 8)) do
    if field(e[2], 'o') == op then
      return {seq_of(e[1]), epoch, 1, owner, cause, 0}
    end
  end
  if redis.call('EXISTS', stream) == 0 then redis.call('HSET', meta, 'b', 0) end
  local seq = redis.call('HINCRBY', meta, 's', 1)
  local fields = {'d', data, 't', now, 'o', op}
  if key ~= '' then table.insert(fields, 'k'); table.insert(fields, key) end
  local added = redis.pcall('XADD', stream, seq .. '-0', unpack(fields))
  if type(added) == 'table' and added.err then
    -- The stream is ahead of the meta's seq (a history pieced together): go on after it.
    local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
    seq = seq_of(top[1]) + 1
    redis.call('HSET', meta, 's', seq)
    redis.call('XADD', stream, seq .. '-0', unpack(fields))
  end
  redis.call('HINCRBY', meta, 'b', cost(fields))
  local evicted = trim(meta, stream, max_messages, max_bytes, now - max_age, 64)
  redis.call('PEXPIRE', stream, max_age)
  if key ~= '' then
    redis.call('SET', keys[3], epoch .. ':' .. seq, 'PX', max_age)
  end
  return {seq, epoch, 0, owner, cause, evicted}
end

-- ARGV: holder, since ('' = live only), client_epoch (''), resume 0|1, max_bytes,
--       max_frame, now_ms, max_age_ms, meta_ttl_ms, new_epoch, expected ('' or the owner a
--       forced take may replace), strict
-- Returns {'ok'|'held', epoch, previous owner or '', token, cause, page...} ('held': a
-- resume found another owner, nothing changed; the gateway decides whether it is live).
local function attach(keys, args)
  local meta, stream = keys[1], keys[2]
  local holder, since, client_epoch, resume = args[1], args[2], args[3], args[4] == '1'
  local max_bytes, max_frame, now, max_age = tonumber(args[5]), tonumber(args[6]), tonumber(args[7]), tonumber(args[8])
  local meta_ttl, new_epoch, expected = tonumber(args[9]), args[10], args[11]
  local epoch, cause = ensure_meta(meta, stream, new_epoch, meta_ttl, args[12])
  local prev = redis.call('HGET', meta, 'o') or ''
  if resume and prev ~= '' and prev ~= holder and prev ~= expected then
    return {'held', epoch, prev, 0, cause}
  end
  redis.call('HSET', meta, 'o', holder)
  local token = redis.call('HINCRBY', meta, 'ot', 1)
  local out = {'ok', epoch, prev, token, cause}
  local p
  if since == '' then
    local last = tonumber(redis.call('HGET', meta, 's'))
    p = {0, last + 1, last}
  else
    p = page(meta, stream, epoch, tonumber(since), client_epoch, max_bytes, max_frame, now - max_age)
  end
  for _, v in ipairs(p) do table.insert(out, v) end
  return out
end

-- ARGV: since, client_epoch (''), max_bytes, max_frame, now_ms, max_age_ms, meta_ttl_ms,
--       new_epoch, strict. Returns {epoch, cause, page...}.
local function fetch(keys, args)
  local meta, stream = keys[1], keys[2]
  local now, max_age = tonumber(args[5]), tonumber(args[6])
  local epoch, cause = ensure_meta(meta, stream, args[8], tonumber(args[7]), args[9])
  local out = {epoch, cause}
  for _, v in ipairs(page(meta, stream, epoch, tonumber(args[1]), args[2], tonumber(args[3]), tonumber(args[4]), now - max_age)) do
    table.insert(out, v)
  end
  return out
end

-- ARGV: holder. Clears the owner only while it is still `holder`: a late unsubscribe of a
-- replaced connection never removes the newer one. Returns 1 if cleared.
local function detach(keys, args)
  if redis.call('HGET', keys[1], 'o') == args[1] then
    redis.call('HDEL', keys[1], 'o')
    return 1
  end
  return 0
end

-- ARGV: now_ms, max_age_ms. Returns {exists 0|1, epoch, last_seq, owner, buffered}.
local function info(keys, args)
  local m = redis.call('HMGET', keys[1], 'e', 's', 'o')
  if not m[1] then return {0, 0, 0, '', 0} end
  local oldest_ok = tonumber(args[1]) - tonumber(args[2])
  local n = 0
  for _, e in ipairs(redis.call('XRANGE', keys[2], '-', '+')) do
    if tonumber(field(e[2], 't')) >= oldest_ok then n = n + 1 end
  end
  return {1, m[1], tonumber(m[2]), m[3] or '', n}
end

redis.register_function('pg_publish', publish)
redis.register_function('pg_attach', attach)
redis.register_function('pg_fetch', fetch)
redis.register_function('pg_detach', detach)
redis.register_function{function_name = 'pg_info', callback = info, flags = {'no-writes'}}
