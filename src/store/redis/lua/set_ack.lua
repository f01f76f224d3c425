-- KEYS: record. ARGV: auth_req_id, expires_in, interval, deadline, channel, fp.
if redis.call('HGET', KEYS[1], 's') ~= 'pending' then return false end
redis.call('HSET', KEYS[1], 'a', ARGV[1], 'e', ARGV[2], 'd', ARGV[4])
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], 'i') else redis.call('HSET', KEYS[1], 'i', ARGV[3]) end
local g = tonumber(redis.call('HGET', KEYS[1], 'g')) or 0
local exp = tonumber(ARGV[4]) + g
redis.call('PEXPIREAT', KEYS[1], exp)
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {exp, redis.call('HGET', KEYS[1], 'n') or ''}
