-- All checks or none (rl_check, then rl_record, in _lib.lua).
-- KEYS: reservations zset, reservation hash, then per check: its zset, its amounts hash.
-- ARGV: reservation id, now, expires_at, reservation ttl, then per check (6 each):
--       bucket, kind ('w' window / 'c' concurrency), limit, cutoff (now - window; '' for
--       'c'), amount, key ttl in seconds.
-- Returns {i, used, fit} for the first check i (1-based) that did not fit, where fit
-- is the time stamp of the entry whose leaving lets this request fit ('' if none can);
-- else {0, then per check: usage after this request, oldest entry's stamp ('' for 'c')}.
local refused, used = rl_check(KEYS, ARGV)
if refused then return refused end
return rl_record(KEYS, ARGV, used)
