-- KEYS: record, lease, claim. ARGV: channel, fp, failure code.
if redis.call('HGET', KEYS[1], 's') ~= 'failed' then return false end
if redis.call('HGET', KEYS[1], 'f') ~= ARGV[3] then return false end
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return all
