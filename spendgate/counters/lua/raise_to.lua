-- KEYS: bucket hash. ARGV: field ('spent' or 'cap'), floor.
-- Sets the field to floor if it is lower (a repair from the ledger, never downwards);
-- returns the figure before, or nil when the bucket does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local before = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if tonumber(before) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return before
