-- KEYS: record. ARGV: binding message, created, deadline, grace, expire-at ms,
-- token hash, action, user key, traceparent. Short fields keep the hash in Redis's compact
-- (listpack) encoding: well under 1 KiB per pending approval.
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], 's', 'pending', 'm', ARGV[1], 'ac', ARGV[7], 'u', ARGV[8], 'c', ARGV[2], 'd', ARGV[3], 'g', ARGV[4])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'n', ARGV[6]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 't', ARGV[9]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
return false
