-- Spend made while Redis was unreachable, added to the live counters exactly once
-- (spendgate.guard.failover).
-- KEYS: the generation hash, this replay's marker, then one bucket hash per amount.
-- ARGV: the epoch the spend belongs to, the marker's TTL in seconds, then the amounts.
-- Returns {-1} when the counters' epoch is not that one (Redis lost them: the buckets are
-- seeded again from the ledger, which has this spend), {0} when the marker exists (this
-- replay was applied before; its reply was lost), else {1, then spent before and after
-- per bucket, -1 and -1 for a bucket that does not exist (seeding brings its spend)}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then
  return {-1}
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return {0}
end
local out = {1}
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local before = tonumber(redis.call('HGET', KEYS[i], 'spent') or '0')
    local after = redis.call('HINCRBY', KEYS[i], 'spent', ARGV[i])
    out[#out + 1] = before
    out[#out + 1] = after
  else
    out[#out + 1] = -1
    out[#out + 1] = -1
  end
end
return out
