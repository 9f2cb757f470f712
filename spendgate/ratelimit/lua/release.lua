-- KEYS: reservations zset, reservation hash. ARGV: prefix, reservation id.
-- Removes every entry and slot of a call that was never forwarded; idempotent.
return rl_release(KEYS, ARGV)
