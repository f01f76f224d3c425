-- KEYS: record, claim. ARGV: owner, ttl ms. 0 taken, 1 busy, 2 finished.
if redis.call('HGET', KEYS[1], 's') ~= 'pending' then return 2 end
local v = redis.call('GET', KEYS[2])
if v and v ~= ARGV[1] then return 1 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 0
