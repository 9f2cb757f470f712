-- All checks or none.
-- KEYS: reservations zset, reservation hash, then per check: its zset, its amounts hash.
-- ARGV: reservation id, now, expires_at, reservation ttl, then per check (6 each):
--       bucket, kind ('w' window / 'c' concurrency), limit, cutoff (now - window; '' for
--       'c'), amount, key ttl in seconds.
-- Returns {i, used, fit} for the first check i (1-based) that did not fit, where fit
-- is the time stamp of the entry whose leaving lets this request fit ('' if none can);
-- else {0, then per check: usage after this request, oldest entry's stamp ('' for 'c')}.
local zset, rkey = KEYS[1], KEYS[2]
local id, now, expires_at, record_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = (#KEYS - 2) / 2

-- The stamp of the entry whose leaving frees `need`, walking oldest first.
local function fit_stamp(z, a, need)
  local freed, start = 0, 0
  while true do
    local page = redis.call('ZRANGE', z, start, start + 99, 'WITHSCORES')
    if #page == 0 then return '' end
    local ids = {}
    for j = 1, #page, 2 do ids[#ids + 1] = page[j] end
    local amounts = redis.call('HMGET', a, unpack(ids))
    for j = 1, #ids do
      freed = freed + tonumber(amounts[j] or '0')
      if freed >= need then return page[2 * j] end
    end
    start = start + 100
  end
end

local used = {}
for i = 1, n do
  local z, a = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local at = 4 + (i - 1) * 6
  local kind, limit, cutoff, amount = ARGV[at + 2], tonumber(ARGV[at + 3]), ARGV[at + 4],
    tonumber(ARGV[at + 5])
  if kind == 'c' then
    local count = redis.call('ZCARD', z)
    if count >= limit then  -- expired slots matter only when they would make the difference
      redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. now)
      count = redis.call('ZCARD', z)
      if count >= limit then return {i, count, ''} end
    end
    used[i] = count
  else
    prune(z, a, cutoff)
    local total = tonumber(redis.call('HGET', a, '#total') or '0')
    if total + amount > limit then
      local fit = ''
      if amount <= limit then fit = fit_stamp(z, a, total + amount - limit) end
      return {i, total, fit}
    end
    used[i] = total
  end
end

local out, record = {0}, {}
for i = 1, n do
  local z, a = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local at = 4 + (i - 1) * 6
  local bucket, kind, amount, ttl = ARGV[at + 1], ARGV[at + 2], ARGV[at + 5],
    tonumber(ARGV[at + 6])
  if kind == 'c' then
    redis.call('ZADD', z, expires_at, id)
    if redis.call('TTL', z) < ttl then redis.call('EXPIRE', z, ttl) end
    out[#out + 1] = used[i] + 1
    out[#out + 1] = ''
  else
    redis.call('ZADD', z, now, id)
    redis.call('HSET', a, id, amount)
    redis.call('HINCRBY', a, '#total', amount)
    redis.call('EXPIRE', z, ttl)
    redis.call('EXPIRE', a, ttl)
    out[#out + 1] = used[i] + tonumber(amount)
    out[#out + 1] = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')[2]
  end
  record[#record + 1] = bucket
  record[#record + 1] = kind
end
if n > 0 then
  redis.call('HSET', rkey, unpack(record))
  redis.call('EXPIRE', rkey, record_ttl)
end
redis.call('ZADD', zset, expires_at, id)
return out
