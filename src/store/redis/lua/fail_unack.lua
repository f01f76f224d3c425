-- KEYS: record, lease, claim. ARGV: channel, fp, created-before ms.
if redis.call('HGET', KEYS[1], 's') ~= 'pending' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'a') == 1 then return 0 end
local c = tonumber(redis.call('HGET', KEYS[1], 'c')) or 0
if c >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 's', 'failed', 'f', 'request_lost')
-- @finish_no
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
