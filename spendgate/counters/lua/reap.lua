-- KEYS: reservations zset. ARGV: now (epoch seconds), key prefix.
-- Releases every reservation whose expires_at is strictly before now; returns how many.
-- Reservation keys are derived here (<prefix>r:<id>), so this script assumes one
-- Redis instance (or a hash-tagged prefix on a cluster).
local zset, now, prefix = KEYS[1], ARGV[1], ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. now)
local count = 0
for _, id in ipairs(ids) do
  count = count + release(zset, prefix .. 'r:' .. id, id)
end
return count
