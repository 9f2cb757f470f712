-- KEYS: the generation hash. ARGV: a fresh epoch token.
-- Writes the epoch if there is none (Redis is new, or restarted empty); returns
-- {epoch, version}.
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local g = redis.call('HMGET', KEYS[1], 'epoch', 'version')
return {g[1], g[2] or '0'}
