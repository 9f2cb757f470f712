-- KEYS: reservations zset, reservation hash, then one bucket hash per settlement.
-- ARGV: reservation id, then per settlement: reserved, actual.
-- Each settlement gives back min(reserved, what this reservation still holds in the
-- bucket) and adds actual to spent; whatever the reservation still holds afterwards
-- is released too, and the reservation is forgotten. A reservation already released
-- or reaped gives nothing back: only `actual` is applied.
-- Returns {spent before, spent after, cap, ...} per settlement (ct_settle in _lib.lua).
return ct_settle(KEYS, ARGV)
