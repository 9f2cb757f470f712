-- KEYS: bucket hash. ARGV: field ('spent' or 'cap'), floor, uncounted ('' = leave it).
-- Sets the field to floor if it is lower (a repair from the ledger, never downwards);
-- a raised `spent` takes the ledger's uncounted spend with it (`uncounted` is raised
-- to ARGV[3]: see catch_up.lua). Returns the figure before, or nil when the bucket
-- does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local before = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if tonumber(before) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if ARGV[3] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'uncounted') or '0') < tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'uncounted', ARGV[3])
  end
end
return before
