#!lua name=pushgate
-- pushgate's channel engine in Redis: one function call per publish, per subscribe
-- (attach), per fetch, per unsubscribe (detach). Every key of a channel shares its hash
-- tag `{<channel>}` (see keys.rs), so Redis Cluster never sees a cross-slot call.
--
--   KEYS[1] <p>:{c}:m  meta hash: e epoch, r replid of the history that wrote it, s last
--                      seq, f seq of the oldest retained message, ft its time (ms), b
--                      retained bytes, o owner ("incarnation:sub_id:worker"), oa when
--                      the owner's client asked (µs, its worker's clock), ot owner
--                      token, q q2 q3 the op ids of the last 6 to 9 publishes, newest
--                      first (16 hex digits and a space each; q holds up to 3, then
--                      moves to q2 and q2 to q3: no field passes 64 bytes, so the hash
--                      stays a listpack, 264 B against 1,056 as one field), x and
--                      lx when the meta's and the list's TTLs were last set (ms), g the
--                      meta's generation (the epoch it was made with)
--   KEYS[2] <p>:{c}:l  list of the retained messages, oldest first: seqs f..s, one each
--                      in order (appends at the tail, trims at the head), so a seq's index
--                      is seq - f. An entry is "<t ms>:<key length>:<key><data>".
--   KEYS[3] <p>:{c}:i:<key>  publish only: "generation:seq" of an idempotency key
--
-- The meta outlives the messages (its TTL is --channel-meta-secs, the list's the retention
-- age), so an idle channel's seq goes on and a late resume gets a gap.
--
-- A list, not a stream: messages leave in append order, and a stream skips the entries it
-- deleted on every read from its head (a publish trimming one message cost 63 µs of Redis
-- time with XDEL against 20 with LPOP, measured with redis-benchmark).

local OVERHEAD = 64          -- bytes accounted per message besides data and key
local ENTRY_OVERHEAD = 12    -- link frame bytes per backlog message besides its data
local OP_WIDTH = 17          -- an op id (16 hex digits) and its space
local OPS_PER_FIELD = 3      -- op ids in each of q, q2, q3 (51 bytes)

-- This node's replication ids: its own history, and the one it was a replica of before a
-- promotion (zeros when none).
local function replids()
  local info = redis.call('INFO', 'replication')
  return string.match(info, 'master_replid:(%w+)') or '',
    string.match(info, 'master_replid2:(%w+)') or ''
end

-- An entry's time, its key length, and where its key starts.
local function header(e)
  local t, kl, at = string.match(e, '^(%d+):(%d+):()')
  return tonumber(t), tonumber(kl), at
end

-- What an entry is accounted (data + key + overhead).
local function cost(e)
  local _, _, at = header(e)
  return #e - at + 1 + OVERHEAD
end

-- The meta's fields this library reads, in one call.
local FIELDS = {'e', 'r', 's', 'f', 'ft', 'b', 'o', 'q', 'x', 'lx', 'g', 'q2', 'q3'}
local function read_meta(meta)
  local m = redis.call('HMGET', meta, unpack(FIELDS))
  return {e = m[1], r = m[2], s = tonumber(m[3] or '0'), f = tonumber(m[4] or '0'),
    ft = tonumber(m[5] or '0'), b = tonumber(m[6] or '0'), o = m[7] or '', q = m[8] or '',
    x = tonumber(m[9] or '0'), lx = tonumber(m[10] or '0'), g = m[11] or m[1],
    q2 = m[12] or '', q3 = m[13] or ''}
end

-- TTLs are set with 1/32 of slack and refreshed once that slack is used up, not on every
-- call (a PEXPIRE per publish was a tenth of its Redis time). Reads skip what is older
-- than the retention age, so the slack only delays when Redis frees a key.
local function slack(ttl) return math.floor(ttl / 32) + 1 end

-- Makes sure the meta exists and was written by this Redis history; `m` is updated.
-- `id`, `id2`: the node's replication ids when the caller has them (nil: asked here).
-- Returns the cause of a new epoch: '' (none), 'missing' (no meta: new, expired, flushed,
-- evicted, restarted without persistence) or 'replid' (another history: a failover to a
-- replica or, with `strict`, a restart from a snapshot; acknowledged writes may be gone).
--
-- `strict` (one node): any other replid than this node's is another history. In a
-- cluster keys also move between masters (a reshard moves them with their `r`), so only
-- the history this node was promoted from (`master_replid2`) counts as lost, and a key
-- that came from another master adopts this node's id.
local function ensure_meta(meta, list, m, new_epoch, meta_ttl, strict, now, id, id2)
  if not id then id, id2 = replids() end
  local cause = ''
  if not m.e then
    -- A list left without its meta must not be inherited by the new history.
    redis.call('DEL', list)
    redis.call('HSET', meta, 'e', new_epoch, 'r', id, 's', 0, 'g', new_epoch)
    m.e, m.r, m.s, m.o, m.q, m.q2, m.q3, m.x, m.lx, m.g = new_epoch, id, 0, '', '', '', '', 0, 0, new_epoch
    cause = 'missing'
  elseif m.r ~= id then
    if strict == '1' or m.r == id2 then
      redis.call('HSET', meta, 'e', new_epoch, 'r', id)
      m.e = new_epoch
      cause = 'replid'
    else
      redis.call('HSET', meta, 'r', id)
    end
    m.r = id
  end
  if now - m.x >= slack(meta_ttl) then
    redis.call('PEXPIRE', meta, meta_ttl + slack(meta_ttl))
    redis.call('HSET', meta, 'x', now)
    m.x = now
  end
  return cause
end

-- The retained messages as the list holds them: (length, first seq, first time, bytes).
-- An expired list (the channel was idle for the retention age) is empty whatever the
-- meta still says.
local function retained(list, m, now)
  local len = redis.call('LLEN', list)
  if len == 0 then return 0, m.s + 1, now, 0 end
  return len, m.f, m.ft, m.b
end

-- One page of what a subscriber resuming after `since` (having seen `client_epoch`, ''
-- if it did not say) gets, with the gap rules of the memory store (memory/log.rs):
-- gap when the epoch differs, `since` is beyond the last seq, or messages between `since`
-- and the oldest retained are gone; then everything retained is wanted. The oldest wanted
-- messages that fit `max_bytes` of payload (and `max_frame` link bytes), at least one;
-- messages older than `oldest_ok` are gone already.
-- Returns {gap 0|1, first_seq, last_seq, seq1, data1, seq2, data2, ...}.
local function page(list, m, since, client_epoch, max_bytes, max_frame, now, oldest_ok)
  local len, f, ft = retained(list, m, now)
  local last = m.s
  -- Expired messages are at the head (appended in time order): count them, reading heads
  -- only when the oldest is expired at all.
  local skip = 0
  if len > 0 and ft < oldest_ok then
    while skip < len do
      local heads = redis.call('LRANGE', list, skip, skip + 15)
      local n = 0
      for _, e in ipairs(heads) do
        if header(e) >= oldest_ok then break end
        n = n + 1
      end
      skip = skip + n
      if n < #heads or #heads == 0 then break end
    end
  end
  local first = f + skip
  local gap = (client_epoch ~= '' and client_epoch ~= tostring(m.e))
    or since > last or since + 1 < first
  local out = {gap and 1 or 0, first, last}
  local from = gap and first or since + 1
  local payload, frame = 0, 0
  local i = from - f
  while i < len do
    local chunk = redis.call('LRANGE', list, i, i + 63)
    for j, e in ipairs(chunk) do
      local _, kl, at = header(e)
      local d = string.sub(e, at + kl)
      payload = payload + #d
      frame = frame + #d + ENTRY_OVERHEAD
      if #out > 3 and (payload > max_bytes or frame > max_frame) then return out end
      table.insert(out, f + i + j - 1)
      table.insert(out, d)
    end
    if #chunk < 64 then break end
    i = i + 64
  end
  return out
end

-- One message appended to a channel. `c` holds what the call fixes for all its messages:
-- now (and now_s, as given), max_messages, max_age, max_bytes, meta_ttl, new_epoch,
-- strict, id, id2. `op` is 16 hex digits, unique per message.
--
-- Written for Redis time (a publish's Lua beyond its five Redis calls was three times
-- the calls' own cost): no number is turned into a string that was given as one, op ids
-- are found with a plain search over fixed-width slots, and only changed fields are set.
-- Returns seq, epoch, duplicate 0|1, owner or '', epoch cause, evicted.
local function append(meta, list, idem, data, key, op, c)
  local now = c.now
  local m = read_meta(meta)
  local cause = ensure_meta(meta, list, m, c.new_epoch, c.meta_ttl, c.strict, now, c.id, c.id2)
  if key ~= '' then
    local seen = redis.call('GET', idem)
    if seen then
      -- Keyed to the meta's generation (set when the meta is made), not to its epoch: a
      -- 'replid' epoch change keeps the count and what survived, so a key that survived
      -- still names its message's seq; a meta made anew counts from 1 again.
      local g, s = string.match(seen, '^(%d+):(%d+)$')
      if g == tostring(m.g) then return tonumber(s), m.e, 1, m.o, cause, 0 end
    end
  end
  -- A client library that re-sends this very call after a dropped connection (the
  -- cluster client does, on the same retry budget it uses for MOVED/ASK) must not give
  -- the message a second seq: the op ids of the last publishes are kept.
  local at, back = string.find(m.q, op, 1, true), 0
  if not at then
    back = #m.q / OP_WIDTH
    at = string.find(m.q2, op, 1, true)
    if not at then
      back = back + #m.q2 / OP_WIDTH
      at = string.find(m.q3, op, 1, true)
    end
  end
  if at then return m.s - back - (at - 1) / OP_WIDTH, m.e, 1, m.o, cause, 0 end
  local seq = m.s + 1
  local entry
  if key == '' then entry = c.now_s .. ':0:' .. data
  else entry = c.now_s .. ':' .. #key .. ':' .. key .. data end
  -- RPUSH answers the new length: 1 means the list was empty or had expired (then the
  -- meta's f, ft and b describe messages that are gone).
  local len = redis.call('RPUSH', list, entry)
  local f, ft, b = m.f, m.ft, m.b
  if len == 1 then f, ft, b = seq, now, 0 end
  b = b + #key + #data + OVERHEAD
  -- Count and bytes retention, oldest first, bounded work per call. Age is the readers'
  -- rule (they skip what is older) and the list's TTL; `ft` stays the time of a message
  -- at or before the oldest, which only tells readers whether to look for expired heads.
  local evicted = 0
  while len > 1 and evicted < 64 and (len > c.max_messages or b > c.max_bytes) do
    b = b - cost(redis.call('LPOP', list))
    len, f, evicted = len - 1, f + 1, evicted + 1
  end
  if #m.q >= OPS_PER_FIELD * OP_WIDTH then
    redis.call('HSET', meta, 'q3', m.q2, 'q2', m.q)
    m.q = ''
  end
  local q = op .. ' ' .. m.q
  if len == 1 or now - m.lx >= slack(c.max_age) then
    redis.call('PEXPIRE', list, c.max_age + slack(c.max_age))
    redis.call('HSET', meta, 's', seq, 'f', f, 'ft', ft, 'b', b, 'q', q, 'lx', c.now_s)
  elseif f ~= m.f then
    redis.call('HSET', meta, 's', seq, 'f', f, 'b', b, 'q', q)
  else
    redis.call('HSET', meta, 's', seq, 'b', b, 'q', q)
  end
  if key ~= '' then
    redis.call('SET', idem, m.g .. ':' .. seq, 'PX', c.max_age)
  end
  return seq, m.e, 0, m.o, cause, evicted
end

-- ARGV: data, now_ms, max_messages, max_age_ms, max_channel_bytes, meta_ttl_ms, new_epoch,
--       op (unique per publish call), key ('' = none), strict
-- Returns {seq, epoch, duplicate 0|1, owner or '', epoch cause, evicted}.
local function publish(keys, args)
  local c = {now = tonumber(args[2]), now_s = args[2], max_messages = tonumber(args[3]),
    max_age = tonumber(args[4]), max_bytes = tonumber(args[5]), meta_ttl = tonumber(args[6]),
    new_epoch = args[7], strict = args[10]}
  return {append(keys[1], keys[2], keys[3], args[1], args[9], args[8], c)}
end

-- Several publishes in one call, in order (a channel may come more than once): one
-- dispatch and one look at the replication ids for all of them. Every key of a call must
-- be on one node (one slot, in a cluster).
-- KEYS: meta, list, idempotency key of each message, in turn.
-- ARGV: now_ms, max_messages, max_age_ms, max_channel_bytes, meta_ttl_ms, new_epoch,
--       strict, then data, key ('' = none) and op id (16 hex digits, unique) of each
--       message.
-- Returns the six values of `publish` for each message, one after another.
local function publish_batch(keys, args)
  local c = {now = tonumber(args[1]), now_s = args[1], max_messages = tonumber(args[2]),
    max_age = tonumber(args[3]), max_bytes = tonumber(args[4]), meta_ttl = tonumber(args[5]),
    new_epoch = args[6], strict = args[7]}
  c.id, c.id2 = replids()
  local out = {}
  for i = 1, #keys / 3 do
    local k, a = 3 * i - 2, 3 * i + 5
    local seq, e, dup, owner, cause, evicted =
      append(keys[k], keys[k + 1], keys[k + 2], args[a], args[a + 1], args[a + 2], c)
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6] =
      seq, e, dup, owner, cause, evicted
  end
  return out
end

-- ARGV: holder, since ('' = live only), client_epoch (''), resume 0|1, max_bytes,
--       max_frame, now_ms, max_age_ms, meta_ttl_ms, new_epoch, expected ('' or the owner a
--       forced take may replace), strict, opened_us ('0' or '': not known)
-- Returns {'ok'|'held'|'late', epoch, previous owner or '', token, cause, page...}
-- ('held': a resume found another owner; 'late': the client asked before the owner's
-- did; nothing changed in either, the gateway decides whether the owner is live).
local function attach(keys, args)
  local meta, list = keys[1], keys[2]
  local holder, since, client_epoch, resume = args[1], args[2], args[3], args[4] == '1'
  local max_bytes, max_frame, now, max_age = tonumber(args[5]), tonumber(args[6]), tonumber(args[7]), tonumber(args[8])
  local meta_ttl, new_epoch, expected = tonumber(args[9]), args[10], args[11]
  local opened = tonumber(args[13] or '') or 0
  local m = read_meta(meta)
  local cause = ensure_meta(meta, list, m, new_epoch, meta_ttl, args[12], now)
  local prev = m.o
  if prev ~= '' and prev ~= holder and prev ~= expected then
    if resume then return {'held', m.e, prev, 0, cause} end
    if opened > 0 and (tonumber(redis.call('HGET', meta, 'oa') or '') or 0) > opened then
      return {'late', m.e, prev, 0, cause}
    end
  end
  if opened > 0 then
    redis.call('HSET', meta, 'o', holder, 'oa', args[13])
  else
    redis.call('HSET', meta, 'o', holder)
    if prev ~= holder then redis.call('HDEL', meta, 'oa') end
  end
  local token = redis.call('HINCRBY', meta, 'ot', 1)
  local out = {'ok', m.e, prev, token, cause}
  local p
  if since == '' then
    p = {0, m.s + 1, m.s}
  else
    p = page(list, m, tonumber(since), client_epoch, max_bytes, max_frame, now, now - max_age)
  end
  for _, v in ipairs(p) do table.insert(out, v) end
  return out
end

-- ARGV: since, client_epoch (''), max_bytes, max_frame, now_ms, max_age_ms, meta_ttl_ms,
--       new_epoch, strict. Returns {epoch, cause, page...}.
local function fetch(keys, args)
  local meta, list = keys[1], keys[2]
  local now, max_age = tonumber(args[5]), tonumber(args[6])
  local m = read_meta(meta)
  local cause = ensure_meta(meta, list, m, args[8], tonumber(args[7]), args[9], now)
  local out = {m.e, cause}
  for _, v in ipairs(page(list, m, tonumber(args[1]), args[2], tonumber(args[3]), tonumber(args[4]), now, now - max_age)) do
    table.insert(out, v)
  end
  return out
end

-- ARGV: holder. Clears the owner only while it is still `holder`: a late unsubscribe of a
-- replaced connection never removes the newer one. Returns 1 if cleared.
local function detach(keys, args)
  if redis.call('HGET', keys[1], 'o') == args[1] then
    redis.call('HDEL', keys[1], 'o', 'oa')
    return 1
  end
  return 0
end

-- ARGV: now_ms, max_age_ms. Returns {exists 0|1, epoch, last_seq, owner, buffered}.
local function info(keys, args)
  local m = read_meta(keys[1])
  if not m.e then return {0, 0, 0, '', 0} end
  local oldest_ok = tonumber(args[1]) - tonumber(args[2])
  local n = 0
  for _, e in ipairs(redis.call('LRANGE', keys[2], 0, -1)) do
    if header(e) >= oldest_ok then n = n + 1 end
  end
  return {1, m.e, m.s, m.o, n}
end

-- The worker registry: one hash (KEYS[1]), a field per worker id, the value
-- "<incarnation> <since ms> <lease end ms> <connections> <capacity> <has tls 0|1> <addrs> <tls addrs>"
-- as a gateway that has a live link to it sees it. Every gateway renews the workers it
-- sees each second and reads the whole fleet back, in this one call.
-- ARGV: now_ms, keep_ms (how long an ended lease stays listed), then id and value of each
-- worker this gateway sees. The same incarnation keeps the later lease end; another
-- incarnation replaces it only when it linked later (a restarted worker) or the current
-- lease has ended, so a gateway still holding a dead incarnation's link cannot undo it.
-- Returns the fleet: id, value, id, value, ...
local function lease_of(v)
  local inc, since, till = string.match(v, '^(%d+) (%d+) (%d+) ')
  return inc, tonumber(since), tonumber(till)
end

local function workers(keys, args)
  local reg, now, keep = keys[1], tonumber(args[1]), tonumber(args[2])
  for i = 3, #args - 1, 2 do
    local id, v = args[i], args[i + 1]
    local cur = redis.call('HGET', reg, id)
    local take = true
    if cur then
      local inc, since, till = lease_of(v)
      local cinc, csince, ctill = lease_of(cur)
      if not inc then
        take = false
      elseif cinc == inc then
        take = till > ctill
      elseif ctill and ctill >= now then
        take = since > csince
      end
    end
    if take then redis.call('HSET', reg, id, v) end
  end
  local all = redis.call('HGETALL', reg)
  local out = {}
  for i = 1, #all - 1, 2 do
    local _, _, till = lease_of(all[i + 1])
    if not till or till + keep < now then
      redis.call('HDEL', reg, all[i])
    else
      out[#out + 1] = all[i]
      out[#out + 1] = all[i + 1]
    end
  end
  return out
end

redis.register_function('pg_publish', publish)
redis.register_function('pg_workers', workers)
redis.register_function('pg_publish_batch', publish_batch)
redis.register_function('pg_attach', attach)
redis.register_function('pg_fetch', fetch)
redis.register_function('pg_detach', detach)
redis.register_function{function_name = 'pg_info', callback = info, flags = {'no-writes'}}
