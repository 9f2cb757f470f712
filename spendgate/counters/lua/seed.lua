-- KEYS: bucket hash. ARGV: spent, cap ('' = none).
-- Sets the figures only if the bucket does not exist yet; returns 1 if it did not.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if ARGV[2] == '' then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0)
else
  redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0, 'cap', ARGV[2])
end
return 1
