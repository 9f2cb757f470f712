-- KEYS: bucket hash. ARGV: spent, cap ('' = none), uncounted (the ledger's uncounted
-- spend, already part of `spent`; see catch_up.lua).
-- Sets the figures only if the bucket does not exist yet; returns 1 if it did not.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0, 'uncounted', ARGV[3])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'cap', ARGV[2])
end
return 1
