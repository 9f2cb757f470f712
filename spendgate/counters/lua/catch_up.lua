-- KEYS: bucket hash. ARGV: uncounted, the ledger's spend (nanos) in this bucket of
-- calls whose settle the counters never saw (admitted without Redis, or a settle that
-- could not reach it).
-- The bucket's `uncounted` field is how much of that `spent` already has: `spent`
-- grows by the difference, once, however many processes (or ticks) send the same or
-- an older figure. Spend Redis did count is not in ARGV[1] at all, so calls settled
-- here and not in the ledger yet cannot be lost to it (as a raise to the ledger's
-- total can lose them). Returns what it added, or nil when the bucket does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local add = nanos_sub(ARGV[1], redis.call('HGET', KEYS[1], 'uncounted') or '0')
if tonumber(add) <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'spent', add)
redis.call('HSET', KEYS[1], 'uncounted', ARGV[1])
return add
