-- KEYS: bucket hash. ARGV: field ('spent' or 'cap'), floor, uncounted ('' = leave it).
-- Sets the field to floor if it is lower (a repair from the ledger, never downwards);
-- a raised `spent` takes the ledger's uncounted spend with it (`uncounted` is raised
-- to ARGV[3]: see catch_up.lua). Returns the figure before, or nil when the bucket
-- does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local before = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if nanos_cmp(before, ARGV[2]) < 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if ARGV[3] ~= '' and nanos_cmp(redis.call('HGET', KEYS[1], 'uncounted') or '0', ARGV[3]) < 0 then
    redis.call('HSET', KEYS[1], 'uncounted', ARGV[3])
  end
end
return before
