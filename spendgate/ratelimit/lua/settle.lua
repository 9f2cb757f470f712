-- KEYS: reservations zset, reservation hash. ARGV: prefix, reservation id, then
-- per corrected bucket: bucket, actual amount.
-- Sets the reservation's entry in each named window bucket to its actual amount (if the
-- entry is still in its window), frees its concurrency slots, forgets the reservation.
-- Request entries stay. A reservation already reaped or released changes nothing.
local zset, rkey = KEYS[1], KEYS[2]
local prefix, id = ARGV[1], ARGV[2]
local kinds = forget(zset, rkey, prefix, id, false)
if kinds == nil then return 0 end
for at = 3, #ARGV, 2 do
  local bucket, actual = ARGV[at], tonumber(ARGV[at + 1])
  if kinds[bucket] == 'w' then
    local a = akey(prefix, bucket)
    local reserved = redis.call('HGET', a, id)
    if reserved then
      redis.call('HSET', a, id, ARGV[at + 1])
      redis.call('HINCRBY', a, '#total', actual - tonumber(reserved))
    end
  end
end
return 1
