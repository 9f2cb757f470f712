-- Shared helpers, prepended by the Python loader to every script.
-- Keys under a prefix P, for a bucket B:
--   P..'rl:'..B..':z'  sorted set: window entries (reservation id, scored by time)
--                      or concurrency slots (reservation id, scored by expires_at);
--   P..'rl:'..B..':a'  hash for window buckets: reservation id -> amount, '#total' -> sum;
--   P..'rl:r:'..ID     hash for a live reservation: bucket -> 'w' (window) or 'c' (slot);
--   P..'rl:reservations'  sorted set of live reservation ids scored by expires_at.
-- Amounts are integers compared as Lua numbers (doubles): exact below 2^53.

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
  local sum = 0
  for _, amount in ipairs(in_chunks('HMGET', a, gone)) do
    sum = sum + tonumber(amount or '0')
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
  in_chunks('HDEL', a, gone)
  redis.call('HINCRBY', a, '#total', -sum)  -- an emptied bucket keeps '#total' 0 until its TTL
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
    redis.call('HINCRBY', a, '#total', -tonumber(amount))
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
