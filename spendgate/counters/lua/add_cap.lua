-- KEYS: bucket hash. ARGV: amount. Raises the stored cap of a seeded bucket; returns the
-- new cap, or nil when the bucket does not exist (its seed reads every top-up from the
-- database, this one included: creating it here would make that seed skip it).
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('HINCRBY', KEYS[1], 'cap', ARGV[1])
return redis.call('HGET', KEYS[1], 'cap')  -- HINCRBY's reply is a double in Lua
