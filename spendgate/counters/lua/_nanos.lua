-- Exact money in Lua, put in front of every script by the Python loader (lua_script).
-- Redis keeps figures (integer nano-dollars) exactly, HINCRBY in 64 bits, but a Lua
-- number is a double, exact only below 2^53 (about $9,007,199):
-- tonumber('19999999999999999') is 2e16. The rule every script follows:
-- * Fast path, inline at the call site (a function call costs more than the arithmetic
--   it would guard): figures are read with tonumber and added or compared as doubles
--   while the doubles stay below NANOS_TOP (2^53), where doubles of integers are exact.
--   Figures and amounts are never negative (stored ones never go below 0; amounts are
--   costs, caps and limits), so a sum needs checking only at its end: a double sum of
--   non-negative doubles below 2^53 is exact, and so is each part (rounding is
--   monotonic). For the same reason an exact double compares rightly with any double
--   (one of 2^53 or more stands for a figure of 2^53 or more). HINCRBY's reply reaches
--   Lua as a double: exact below 2^53 too.
-- * Otherwise the call site calls these functions with the figures' texts, exact for
--   any figures (negative ones too): each is split into hi * 10^9 + lo with
--   0 <= lo < 10^9, both parts exact doubles, and the parts are added with a carry.
-- A figure here is a decimal text (as Redis and ARGV give it) or a Lua number below 2^53
-- in size; results are figures too (numbers below 9 * 10^15 in size, texts beyond), and
-- either kind can be passed to redis.call or returned as it is (Redis writes an integral
-- number below 2^53 with its exact digits). The sign of a double is always right.

local NANOS_TOP = 9007199254740992  -- 2^53
local NANOS_BASE = 1e9

-- a + sign * b (sign 1 or -1), exactly, for any figures a and b.
local function nanos_add(a, b, sign)
  sign = sign or 1
  local x, y = tonumber(a), sign * tonumber(b)
  local s = x + y
  if s < NANOS_TOP and s > -NANOS_TOP and x < NANOS_TOP and x > -NANOS_TOP
      and y < NANOS_TOP and y > -NANOS_TOP then
    return s
  end
  -- figure f as (hi, lo) with f = hi * 10^9 + lo and 0 <= lo < 10^9 (a local function:
  -- every script run creates its top-level ones, this one only on this path)
  local function split(f)
    if type(f) == 'number' then  -- integral and below 2^53: fmod and the rest are exact
      local lo = math.fmod(f, NANOS_BASE)
      if lo < 0 then lo = lo + NANOS_BASE end
      return (f - lo) / NANOS_BASE, lo
    end
    local negative = string.byte(f, 1) == 45  -- '-'
    local digits = negative and string.sub(f, 2) or f
    local n, hi, lo = #digits, 0, nil
    if n > 9 then
      hi, lo = tonumber(string.sub(digits, 1, n - 9)), tonumber(string.sub(digits, n - 8))
    else
      lo = tonumber(digits)
    end
    if not negative then return hi, lo end
    if lo > 0 then return -hi - 1, NANOS_BASE - lo end
    return -hi, 0
  end
  local ah, al = split(a)
  local bh, bl = split(b)
  local hi, lo = ah + sign * bh, al + sign * bl
  local carry = math.floor(lo / NANOS_BASE)
  hi, lo = hi + carry, lo - carry * NANOS_BASE
  if hi > -9e6 and hi < 9e6 then return hi * NANOS_BASE + lo end
  if hi >= 0 then return string.format('%d%09d', hi, lo) end
  if lo == 0 then return string.format('-%d%09d', -hi, 0) end
  return string.format('-%d%09d', -hi - 1, NANOS_BASE - lo)
end

-- a - b, exactly.
local function nanos_sub(a, b)
  return nanos_add(a, b, -1)
end

-- -1, 0 or 1 as figure a is less than, equal to or greater than figure b. Doubles that
-- differ order their figures rightly (rounding is monotonic); equal ones are exact below
-- 2^53, and past it the difference decides.
local function nanos_cmp(a, b)
  local x, y = tonumber(a), tonumber(b)
  if x == y and (x >= NANOS_TOP or x <= -NANOS_TOP) then
    x, y = tonumber(nanos_sub(a, b)), 0
  end
  if x < y then return -1 end
  if x > y then return 1 end
  return 0
end

-- The smaller of figures a and b.
local function nanos_min(a, b)
  if nanos_cmp(a, b) <= 0 then return a end
  return b
end
