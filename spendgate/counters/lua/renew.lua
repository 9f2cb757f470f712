-- KEYS: reservations zset. ARGV: expires_at, then reservation ids.
-- Moves each live reservation's expiry (a heartbeat); ids no longer there stay gone.
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
end
return #ARGV - 1
