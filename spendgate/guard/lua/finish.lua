-- Settle or release a call's rate-limit reservation and its budget/wallet reservation.
-- ARGV: rate mode, counters mode ('s' settle, 'r' release, '' none), rate keys, rate
-- arguments, then the halves (as in ratelimit/lua/settle.lua or release.lua, and
-- counters/lua/settle.lua or release.lua).
-- Returns the counters' settle reply ({spent before, spent after, cap, ...}), else {}.
local rmode, cmode = ARGV[1], ARGV[2]
local nk, na = tonumber(ARGV[3]), tonumber(ARGV[4])
local rk, ra = slice(KEYS, 1, nk), slice(ARGV, 5, 4 + na)
local ck, ca = slice(KEYS, nk + 1, #KEYS), slice(ARGV, 5 + na, #ARGV)
if rmode == 's' then
  rl_settle(rk, ra)
elseif rmode == 'r' then
  rl_release(rk, ra)
end
if cmode == 's' then return ct_settle(ck, ca) end
if cmode == 'r' then release(ck[1], ck[2], ca[1]) end
return {}
