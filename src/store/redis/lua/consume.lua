-- KEYS: record, lease, used, claim. ARGV: channel, fp, shortest marker ms.
if redis.call('HGET', KEYS[1], 's') ~= 'granted' then return false end
local all = redis.call('HGETALL', KEYS[1])
local g = tonumber(redis.call('HGET', KEYS[1], 'g')) or 0
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
redis.call('SET', KEYS[3], '1', 'PX', math.max(g, tonumber(ARGV[3])))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return all
