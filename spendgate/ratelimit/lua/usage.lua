-- KEYS: for each bucket, its z and a keys. ARGV: for each bucket, 'c' and now (a
-- concurrency bucket: slots whose expires_at is not before now) or 'w' and the cutoff
-- (a window bucket: the sum of the entries stamped after it).
-- Read-only: what rl_check would count, without pruning or recording anything.
local out = {}
for i = 1, #KEYS / 2 do
  local z, a = KEYS[2 * i - 1], KEYS[2 * i]
  local kind, at = ARGV[2 * i - 1], ARGV[2 * i]
  if kind == 'c' then
    out[i] = redis.call('ZCOUNT', z, at, '+inf')
  else
    local live = redis.call('ZRANGEBYSCORE', z, '(' .. at, '+inf')
    local sum = 0
    if #live > 0 then
      for _, amount in ipairs(in_chunks('HMGET', a, live)) do
        sum = nanos_add(sum, amount or '0')
      end
    end
    out[i] = sum
  end
end
return out
