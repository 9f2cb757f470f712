-- KEYS: reservations zset, reservation hash, then one bucket hash per settlement.
-- ARGV: reservation id, then per settlement: reserved, actual.
-- Each settlement gives back min(reserved, what this reservation still holds in the
-- bucket) and adds actual to spent; whatever the reservation still holds afterwards
-- is released too, and the reservation is forgotten. A reservation already released
-- or reaped gives nothing back: only `actual` is applied.
-- Returns {spent before, spent after, ...} per settlement.
local zset, rkey, id = KEYS[1], KEYS[2], ARGV[1]
local held = {}
local flat = redis.call('HGETALL', rkey)
for i = 1, #flat, 2 do
  held[flat[i]] = tonumber(flat[i + 1])
end

local out = {}
for i = 3, #KEYS do
  local key = KEYS[i]
  local a = 2 + (i - 3) * 2
  local still = held[key] or 0
  local back = math.min(tonumber(ARGV[a]), still)
  if back > 0 then
    give_back(key, back)
    held[key] = still - back
  end
  out[#out + 1] = redis.call('HGET', key, 'spent') or '0'
  out[#out + 1] = redis.call('HINCRBY', key, 'spent', ARGV[a + 1])
end

for i = 1, #flat, 2 do
  local key = flat[i]
  give_back(key, held[key])
  held[key] = 0
end
redis.call('DEL', rkey)
redis.call('ZREM', zset, id)
return out
