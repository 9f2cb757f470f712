-- Joint scripts: the rate limiter's and the budget counters' operations in one script,
-- so a proxied call pays one round trip before the upstream and one after. The Python
-- loader puts ratelimit/lua/_lib.lua, counters/lua/_lib.lua and this file in front.
-- KEYS: the rate limiter's keys, then the counters'. ARGV starts with a header (modes and
-- how many keys and arguments belong to the rate limiter), then the rate limiter's
-- arguments, then the counters'; each half is laid out as in its own standalone script.

-- t[first..last] as a new table (the halves of KEYS and ARGV).
local function slice(t, first, last)
  local out = {}
  for i = first, last do out[#out + 1] = t[i] end
  return out
end
