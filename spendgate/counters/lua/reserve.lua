-- The generation check (ct_stale), then all holds or none (ct_check, then ct_record), in
-- _lib.lua: the joint acquire.lua without its rate half, for counters whose rate limiter
-- is elsewhere. Checked here, not in a step before: a Redis that restarted empty in
-- between would get buckets holding only these holds, which the seed then skips.
-- KEYS: the generation hash, the reservations zset, the reservation hash, then one bucket
--       hash per hold.
-- ARGV: the epoch and version the caller planned with ('' version: not checked), the
--       reservation id, expires_at, then per hold: amount, cap ('' = none),
--       use_stored_cap ('1'/'0').
-- Returns {3, {epoch, version}} when the stored generation differs (nothing written),
-- {2, {1-based index of a hold that did not fit, spent, reserved, cap, ...: each such
-- hold, in order}}, or
-- {0, {each hold's bucket's spent as read}} when every hold fits (and records them).
if ARGV[2] ~= '' then
  local stale = ct_stale(KEYS[1], ARGV[1], ARGV[2])
  if stale then return {3, stale} end
end
local keys, argv = slice(KEYS, 2, #KEYS), slice(ARGV, 3, #ARGV)
local refused, seen = ct_check(keys, argv)
if refused then return {2, refused} end
ct_record(keys, argv)
return {0, seen}
