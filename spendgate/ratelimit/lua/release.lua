-- KEYS: reservations zset, reservation hash. ARGV: prefix, reservation id.
-- Removes every entry and slot of a call that was never forwarded; idempotent.
local kinds = forget(KEYS[1], KEYS[2], ARGV[1], ARGV[2], true)
if kinds == nil then return 0 end
return 1
