-- Shared helpers, prepended by the Python loader to every script that needs them.
-- Figures are integers (nano-dollars). Comparisons happen in Lua numbers (doubles),
-- exact while sums stay within 2^53 (about $9.007M in nanos per bucket); HINCRBY itself stays exact
-- in 64 bits, and figures returned to Python are the stored strings where possible.

-- Take up to `amount` back out of `key`'s reserved, never below zero.
local function give_back(key, amount)
  if amount <= 0 then return end
  local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
  local back = math.min(amount, reserved)
  if back > 0 then
    redis.call('HINCRBY', key, 'reserved', -back)
  end
end

-- Release every hold recorded under reservation `id` and forget it.
-- Returns 1 if the reservation was live, 0 if it was already gone.
local function release(zset, rkey, id)
  local held = redis.call('HGETALL', rkey)
  for i = 1, #held, 2 do
    give_back(held[i], tonumber(held[i + 1]))
  end
  redis.call('DEL', rkey)
  return redis.call('ZREM', zset, id)
end
