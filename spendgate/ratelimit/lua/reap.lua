-- KEYS: reservations zset. ARGV: prefix, now.
-- Frees the slots of every reservation whose expires_at is strictly before now and
-- forgets it (its window entries age out on their own); returns how many.
-- Reservation and bucket keys are derived here from the prefix, so this script assumes
-- one Redis instance (or a hash-tagged prefix such as '{sg}:' on a cluster).
local zset, prefix, now = KEYS[1], ARGV[1], ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. now)
for _, id in ipairs(ids) do
  forget(zset, prefix .. 'rl:r:' .. id, prefix, id, false)
end
return #ids
