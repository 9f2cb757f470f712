-- KEYS: reservations zset, reservation hash. ARGV: prefix, reservation id, then
-- per corrected bucket: bucket, actual amount.
-- Sets the reservation's entry in each named window bucket to its actual amount (if the
-- entry is still in its window), frees its concurrency slots, forgets the reservation.
-- Request entries stay. A reservation already reaped or released changes nothing.
return rl_settle(KEYS, ARGV)
