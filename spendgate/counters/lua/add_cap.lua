-- KEYS: bucket hash. ARGV: amount. Raises the stored cap, creating the bucket if needed.
redis.call('HSETNX', KEYS[1], 'spent', 0)
redis.call('HSETNX', KEYS[1], 'reserved', 0)
return redis.call('HINCRBY', KEYS[1], 'cap', ARGV[1])
