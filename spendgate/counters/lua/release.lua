-- KEYS: reservations zset, reservation hash. ARGV: reservation id.
-- Gives back everything still held; a second call finds nothing and does nothing.
return release(KEYS[1], KEYS[2], ARGV[1])
