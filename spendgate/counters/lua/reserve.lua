-- All holds or none (ct_check, then ct_record, in _lib.lua).
-- KEYS: reservations zset, reservation hash, then one bucket hash per hold.
-- ARGV: reservation id, expires_at, then per hold: amount, cap ('' = none),
--       use_stored_cap ('1'/'0').
-- Returns nil when every hold fits (and records them), else
-- {1-based index of the first hold that did not fit, spent, reserved, cap}.
local refused = ct_check(KEYS, ARGV)
if refused then return refused end
ct_record(KEYS, ARGV)
return nil
