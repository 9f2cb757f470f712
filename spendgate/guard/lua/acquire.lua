-- Rate-limit acquire and budget/wallet reserve, all or nothing: both halves are checked
-- before either is recorded, so a refusal by one leaves the other untouched.
-- ARGV: rate keys (0: no rate half), rate arguments, has-counters ('1'/'0'), then the
-- halves (rate as in ratelimit/lua/acquire.lua, counters as in counters/lua/reserve.lua).
-- Returns {1, rate refusal} (as acquire.lua's), {2, counters refusal} (as reserve.lua's),
-- or {0, rate grant (as acquire.lua's; {} without a rate half)}.
local nk, na, counters = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local rk, ra = slice(KEYS, 1, nk), slice(ARGV, 4, 3 + na)
local ck, ca = slice(KEYS, nk + 1, #KEYS), slice(ARGV, 4 + na, #ARGV)
local used
if nk > 0 then
  local refused
  refused, used = rl_check(rk, ra)
  if refused then return {1, refused} end
end
if counters then
  local refused = ct_check(ck, ca)
  if refused then return {2, refused} end
end
local granted = {}
if nk > 0 then granted = rl_record(rk, ra, used) end
if counters then ct_record(ck, ca) end
return {0, granted}
