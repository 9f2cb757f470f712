-- Shared helpers, prepended by the Python loader to every script that needs them.
-- Figures are integers (nano-dollars), exact to the nano in 64 bits: doubles only below
-- NANOS_TOP, nanos_* beyond (the rule is in _nanos.lua, loaded first). Figures returned
-- to Python are the stored strings where possible.

-- t[first..last] as a new table (a part of KEYS or ARGV laid out as another script's).
-- Built by one unpack: filled one element at a time, a table is resized at every power
-- of two, each time rehashing what it holds. unpack stops at Lua's C stack (~8000
-- values): a call under thousands of budgets gets the loop instead.
local UNPACK_MAX = 4000
local function slice(t, first, last)
  if last - first < UNPACK_MAX then return {unpack(t, first, last)} end
  local out = {}
  for i = first, last do out[#out + 1] = t[i] end
  return out
end

-- Take up to `amount` (a figure) back out of `key`'s reserved, never below zero.
-- `reserved`: that figure, if the caller has just read it (else it is read here).
local function give_back(key, amount, reserved)
  local x = tonumber(amount)
  if x <= 0 then return end
  reserved = reserved or redis.call('HGET', key, 'reserved') or '0'
  local r = tonumber(reserved)
  if r <= 0 then return end
  local back = x < r and x or r
  if back < NANOS_TOP then
    redis.call('HINCRBY', key, 'reserved', -back)
  else
    redis.call('HINCRBY', key, 'reserved', nanos_sub(0, nanos_min(amount, reserved)))
  end
end

-- Release every hold recorded under reservation `id` and forget it.
-- Returns 1 if the reservation was live, 0 if it was already gone.
local function release(zset, rkey, id)
  local held = redis.call('HGETALL', rkey)
  for i = 1, #held, 2 do
    give_back(held[i], held[i + 1])
  end
  redis.call('DEL', rkey)
  return redis.call('ZREM', zset, id)
end

-- The generation stored in hash `key` differs from the `epoch` and `version` a process
-- built its policies and buckets from: returns {stored epoch, stored version}, else nil.
-- A missing epoch ('' here) means the counters were lost: never equal to a real one.
local function ct_stale(key, epoch, version)
  local g = redis.call('HMGET', key, 'epoch', 'version')
  local e, v = g[1] or '', g[2] or '0'
  if e ~= epoch or v ~= version then return {e, v} end
  return nil
end

-- The operations, as functions of (keys, argv) laid out as each script's KEYS/ARGV, so
-- the joint scripts in spendgate/guard/lua/ can run them next to the rate limiter's.

-- Reserve, first half: every hold checked, nothing written. Returns nil and each hold's
-- bucket's spent as read (before this call) when all fit, else {1-based index of a hold
-- that did not fit, spent, reserved, cap, ...}: every such hold, in order (the checks go
-- on past the first refusal, so the caller learns each cap the call would pass).
local function ct_check(keys, argv)
  local pending, seen, refused = {}, {}, nil
  for i = 3, #keys do
    local key = keys[i]
    local a = 3 + (i - 3) * 3
    local amount = argv[a]
    local figures = redis.call('HMGET', key, 'spent', 'reserved', 'cap')
    local spent, reserved = figures[1] or '0', figures[2] or '0'
    local cap = nil
    if argv[a + 2] == '1' then
      cap = figures[3] or '0'          -- a wallet with no top-ups has no funds
    elseif argv[a + 1] ~= '' then
      cap = argv[a + 1]
    end
    local wanted = amount
    if pending[key] then  -- earlier holds on the same bucket in this call
      wanted = nanos_add(pending[key], amount)
    end
    local over = false
    if cap ~= nil then
      local total = tonumber(spent) + tonumber(reserved) + tonumber(wanted)
      if total < NANOS_TOP then
        over = total > tonumber(cap)
      else
        over = nanos_cmp(nanos_add(nanos_add(spent, reserved), wanted), cap) > 0
      end
    end
    if over then
      refused = refused or {}
      local n = #refused
      refused[n + 1], refused[n + 2], refused[n + 3], refused[n + 4] = i - 2, spent, reserved, cap
    else
      pending[key] = wanted
      seen[#seen + 1] = spent
    end
  end
  if refused then return refused end
  return nil, seen
end

-- Reserve, second half: add every hold ct_check passed and remember the reservation.
local function ct_record(keys, argv)
  local rkey = keys[2]
  for i = 3, #keys do
    local amount = argv[3 + (i - 3) * 3]
    redis.call('HINCRBY', keys[i], 'reserved', amount)
    redis.call('HINCRBY', rkey, keys[i], amount)
  end
  redis.call('ZADD', keys[1], argv[2], argv[1])
end

-- Settle (see settle.lua). Returns {spent before, spent after, cap (nil if none), ...}
-- per settlement: the cap lets a wallet's balance be judged without another read.
local function ct_settle(keys, argv)
  local zset, rkey, id = keys[1], keys[2], argv[1]
  local held = {}
  local flat = redis.call('HGETALL', rkey)
  for i = 1, #flat, 2 do
    held[flat[i]] = flat[i + 1]
  end
  -- A bucket gone (Redis restarted empty, not seeded again yet) cannot take the cost:
  -- created here at this one call's cost, the seed would skip it. Then none of them takes
  -- it: the caller sees spent before = after everywhere and marks the ledger row
  -- uncounted (lost_buckets), from which each bucket gets it exactly once (catch_up, or
  -- the seed if the row is there first). Adding it to the others as well would count it
  -- twice in those: an uncounted row is caught up in every bucket it applies to.
  -- Each bucket's figures are read once, here: a bucket that exists has one of them.
  local whole, figures = true, {}
  for i = 3, #keys do
    local f = redis.call('HMGET', keys[i], 'spent', 'reserved', 'cap', 'uncounted')
    if not (f[1] or f[2] or f[3] or f[4]) then whole = false end
    figures[i] = f
  end
  local out, settled = {}, {}
  for i = 3, #keys do
    local key = keys[i]
    local a = 2 + (i - 3) * 2
    local f = figures[i]
    if settled[key] then  -- a second settlement in one bucket: read what the first moved
      f = redis.call('HMGET', key, 'spent', 'reserved', 'cap')
    end
    settled[key] = true
    local still, gives = held[key] or 0, argv[a]
    local s, g = tonumber(still), tonumber(gives)
    if s < NANOS_TOP and g < NANOS_TOP then
      local back = g < s and g or s
      if back > 0 then
        give_back(key, back, f[2] or '0')
        held[key] = s - back
      end
    else
      local back = nanos_min(gives, still)
      give_back(key, back, f[2] or '0')
      held[key] = nanos_sub(still, back)
    end
    if whole then
      local before, actual = f[1] or '0', argv[a + 1]
      local after = redis.call('HINCRBY', key, 'spent', actual)
      if after >= NANOS_TOP then after = nanos_add(before, actual) end
      out[#out + 1] = before
      out[#out + 1] = after
      out[#out + 1] = f[3]  -- false (a nil reply) keeps its place
    else
      out[#out + 1] = '0'
      out[#out + 1] = '0'
      out[#out + 1] = false
    end
  end
  for i = 1, #flat, 2 do
    local key = flat[i]
    give_back(key, held[key])
    held[key] = 0
  end
  redis.call('DEL', rkey)
  redis.call('ZREM', zset, id)
  return out
end
