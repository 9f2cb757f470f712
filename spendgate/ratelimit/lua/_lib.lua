-- Shared helpers, prepended by the Python loader to every script.
-- Keys under a prefix P, for a bucket B:
--   P..'rl:'..B..':z'  sorted set: window entries (reservation id, scored by time)
--                      or concurrency slots (reservation id, scored by expires_at);
--   P..'rl:'..B..':a'  hash for window buckets: reservation id -> amount, '#total' -> sum;
--   P..'rl:r:'..ID     hash for a live reservation: bucket -> 'w' (window) or 'c' (slot);
--   P..'rl:reservations'  sorted set of live reservation ids scored by expires_at.
-- Amounts are integers (a spend window's are nano-dollars; never negative: validate),
-- exact to the nano in 64 bits: doubles only below NANOS_TOP, nanos_* beyond (the rule is
-- in counters/lua/_nanos.lua, loaded first).

local CHUNK = 1000

local function zkey(prefix, bucket) return prefix .. 'rl:' .. bucket .. ':z' end
local function akey(prefix, bucket) return prefix .. 'rl:' .. bucket .. ':a' end

-- Call `command` on `key` with `items` appended, CHUNK at a time (unpack has a limit).
local function in_chunks(command, key, items)
  local out = {}
  for first = 1, #items, CHUNK do
    local reply = redis.call(command, key, unpack(items, first, math.min(first + CHUNK - 1, #items)))
    if type(reply) == 'table' then
      for _, value in ipairs(reply) do out[#out + 1] = value end
    end
  end
  return out
end

-- Drop the window entries stamped at or before `cutoff`.
local function prune(z, a, cutoff)
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  if #gone == 0 then return end
  local amounts = in_chunks('HMGET', a, gone)
  local sum = 0
  for _, amount in ipairs(amounts) do
    sum = sum + tonumber(amount or '0')
  end
  local minus = -sum
  if sum >= NANOS_TOP then  -- past exact doubles: the sum again, exactly
    sum = 0
    for _, amount in ipairs(amounts) do sum = nanos_add(sum, amount or '0') end
    minus = nanos_sub(0, sum)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
  in_chunks('HDEL', a, gone)
  redis.call('HINCRBY', a, '#total', minus)  -- an emptied bucket keeps '#total' 0 until its TTL
end

-- Remove reservation `id`'s entry from a window bucket, if it is still there.
local function remove_entry(z, a, id)
  local amount = redis.call('HGET', a, id)
  if not amount then return end
  redis.call('ZREM', z, id)
  if redis.call('ZCARD', z) == 0 then
    redis.call('DEL', a)
  else
    redis.call('HDEL', a, id)
    redis.call('HINCRBY', a, '#total', nanos_sub(0, amount))
  end
end

-- Forget reservation `id`: free its slots and, if `everything`, remove its window
-- entries too. Returns its record as a table bucket -> kind, or nil if it was gone.
local function forget(zset, rkey, prefix, id, everything)
  local flat = redis.call('HGETALL', rkey)
  local kinds = {}
  for i = 1, #flat, 2 do
    local bucket, kind = flat[i], flat[i + 1]
    kinds[bucket] = kind
    if kind == 'c' then
      redis.call('ZREM', zkey(prefix, bucket), id)
    elseif everything then
      remove_entry(zkey(prefix, bucket), akey(prefix, bucket), id)
    end
  end
  redis.call('DEL', rkey)
  if redis.call('ZREM', zset, id) == 0 and #flat == 0 then return nil end
  return kinds
end

-- The operations, as functions of (keys, argv) laid out as each script's KEYS/ARGV, so
-- the joint scripts in spendgate/guard/lua/ can run them next to the budget counters'.

-- The stamp of the entry whose leaving frees `need`, walking oldest first.
local function fit_stamp(z, a, need)
  local freed, start = 0, 0
  while true do
    local page = redis.call('ZRANGE', z, start, start + 99, 'WITHSCORES')
    if #page == 0 then return '' end
    local ids = {}
    for j = 1, #page, 2 do ids[#ids + 1] = page[j] end
    local amounts = redis.call('HMGET', a, unpack(ids))
    for j = 1, #ids do
      freed = nanos_add(freed, amounts[j] or '0')
      if nanos_cmp(freed, need) >= 0 then return page[2 * j] end
    end
    start = start + 100
  end
end

-- Acquire, first half: every check, nothing recorded (pruning entries that have left
-- and expired slots changes no usage). Returns the refusal {i, used, fit} for the first
-- check i (1-based) that does not fit, or nil and the usage per check after this
-- request, for rl_record.
local function rl_check(keys, argv)
  local now = argv[2]
  local used = {}
  for i = 1, (#keys - 2) / 2 do
    local z, a = keys[1 + 2 * i], keys[2 + 2 * i]
    local at = 4 + (i - 1) * 6
    local kind, limit, cutoff, amount = argv[at + 2], argv[at + 3], argv[at + 4], argv[at + 5]
    if kind == 'c' then
      limit = tonumber(limit)
      local count = redis.call('ZCARD', z)
      if count >= limit then  -- expired slots matter only when they would make the difference
        redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. now)
        count = redis.call('ZCARD', z)
        if count >= limit then return {i, count, ''} end
      end
      used[i] = count + 1
    else
      prune(z, a, cutoff)
      local total = redis.call('HGET', a, '#total') or '0'
      local after = tonumber(total) + tonumber(amount)
      local over
      if after < NANOS_TOP then
        over = after > tonumber(limit)
      else
        after = nanos_add(total, amount)
        over = nanos_cmp(after, limit) > 0
      end
      if over then
        local fit = ''
        if nanos_cmp(amount, limit) <= 0 then fit = fit_stamp(z, a, nanos_sub(after, limit)) end
        return {i, total, fit}
      end
      used[i] = after
    end
  end
  return nil, used
end

-- Acquire, second half: record every check that rl_check passed and the reservation.
-- Returns {0, then per check: usage after this request, oldest entry's stamp ('' for 'c')}.
local function rl_record(keys, argv, used)
  local zset, rkey = keys[1], keys[2]
  local id, now, expires_at, record_ttl = argv[1], argv[2], argv[3], argv[4]
  local n = (#keys - 2) / 2
  local out, record = {0}, {}
  for i = 1, n do
    local z, a = keys[1 + 2 * i], keys[2 + 2 * i]
    local at = 4 + (i - 1) * 6
    -- ttl stays text: a Lua number passed to redis.call is formatted with snprintf
    local bucket, kind, amount, ttl = argv[at + 1], argv[at + 2], argv[at + 5], argv[at + 6]
    if kind == 'c' then
      redis.call('ZADD', z, expires_at, id)
      if redis.call('TTL', z) < tonumber(ttl) then redis.call('EXPIRE', z, ttl) end
      out[#out + 1] = used[i]
      out[#out + 1] = ''
    else
      redis.call('ZADD', z, now, id)
      redis.call('HSET', a, id, amount)
      redis.call('HINCRBY', a, '#total', amount)
      redis.call('EXPIRE', z, ttl)
      redis.call('EXPIRE', a, ttl)
      out[#out + 1] = used[i]
      out[#out + 1] = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')[2]
    end
    record[#record + 1] = bucket
    record[#record + 1] = kind
  end
  if n > 0 then
    redis.call('HSET', rkey, unpack(record))
    redis.call('EXPIRE', rkey, record_ttl)
  end
  redis.call('ZADD', zset, expires_at, id)
  return out
end

-- Settle (see settle.lua); returns 1, or 0 for a reservation already gone.
local function rl_settle(keys, argv)
  local prefix, id = argv[1], argv[2]
  local kinds = forget(keys[1], keys[2], prefix, id, false)
  if kinds == nil then return 0 end
  for at = 3, #argv, 2 do
    local bucket, actual = argv[at], argv[at + 1]
    if kinds[bucket] == 'w' then
      local a = akey(prefix, bucket)
      local reserved = redis.call('HGET', a, id)
      if reserved then
        redis.call('HSET', a, id, actual)
        local x, r = tonumber(actual), tonumber(reserved)
        if x < NANOS_TOP and r < NANOS_TOP then
          redis.call('HINCRBY', a, '#total', x - r)
        else
          redis.call('HINCRBY', a, '#total', nanos_sub(actual, reserved))
        end
      end
    end
  end
  return 1
end

-- Release (see release.lua); returns 1, or 0 for a reservation already gone.
local function rl_release(keys, argv)
  if forget(keys[1], keys[2], argv[1], argv[2], true) == nil then return 0 end
  return 1
end
