-- All holds or none.
-- KEYS: reservations zset, reservation hash, then one bucket hash per hold.
-- ARGV: reservation id, expires_at, then per hold: amount, cap ('' = none),
--       use_stored_cap ('1'/'0').
-- Returns nil when every hold fits (and records them), else
-- {1-based index of the first hold that did not fit, spent, reserved, cap}.
local zset, rkey = KEYS[1], KEYS[2]
local id, expires_at = ARGV[1], ARGV[2]
local pending = {}

for i = 3, #KEYS do
  local key = KEYS[i]
  local a = 3 + (i - 3) * 3
  local amount = tonumber(ARGV[a])
  local figures = redis.call('HMGET', key, 'spent', 'reserved', 'cap')
  local spent, reserved = figures[1] or '0', figures[2] or '0'
  local cap = nil
  if ARGV[a + 2] == '1' then
    cap = figures[3] or '0'          -- a wallet with no top-ups has no funds
  elseif ARGV[a + 1] ~= '' then
    cap = ARGV[a + 1]
  end
  local already = pending[key] or 0  -- earlier holds on the same bucket in this call
  if cap ~= nil and tonumber(spent) + tonumber(reserved) + already + amount > tonumber(cap) then
    return {i - 2, spent, reserved, cap}
  end
  pending[key] = already + amount
end

for i = 3, #KEYS do
  local amount = ARGV[3 + (i - 3) * 3]
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('HINCRBY', rkey, KEYS[i], amount)
end
redis.call('ZADD', zset, expires_at, id)
return nil
