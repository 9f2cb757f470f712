-- Generation check, then rate-limit acquire and budget/wallet reserve, all or nothing:
-- both halves are checked before either is recorded, so a refusal by one leaves the
-- other untouched.
-- KEYS: the generation hash, the rate keys, then the counters' keys.
-- ARGV: rate keys (0: no rate half), rate arguments, has-counters ('1'/'0'), the epoch
-- and policy version the caller planned with, then the halves (rate as in
-- ratelimit/lua/acquire.lua, counters as in counters/lua/reserve.lua).
-- Returns {3, {epoch, version}} when the stored generation differs (nothing written:
-- the caller reloads its policies, or re-seeds after lost counters, and plans again),
-- {1, rate refusal} (as acquire.lua's), {2, counters refusal} (as reserve.lua's),
-- or {0, rate grant (as acquire.lua's; {} without a rate half), each hold's bucket's
-- spent as read (as reserve.lua's; {} without a counters half)}.
local nk, na, counters = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local stale = ct_stale(KEYS[1], ARGV[4], ARGV[5])
if stale then return {3, stale} end
local rk, ra = slice(KEYS, 2, 1 + nk), slice(ARGV, 6, 5 + na)
local ck, ca = slice(KEYS, 2 + nk, #KEYS), slice(ARGV, 6 + na, #ARGV)
local used
if nk > 0 then
  local refused
  refused, used = rl_check(rk, ra)
  if refused then return {1, refused} end
end
local seen = {}
if counters then
  local refused
  refused, seen = ct_check(ck, ca)
  if refused then return {2, refused} end
end
local granted = {}
if nk > 0 then granted = rl_record(rk, ra, used) end
if counters then ct_record(ck, ca) end
return {0, granted, seen}
