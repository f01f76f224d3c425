-- KEYS: record, lease, claim. ARGV: channel, fp, status, failure, approver JSON,
-- the party that brought the answer ('' when none).
if redis.call('HGET', KEYS[1], 's') ~= 'pending' then return 0 end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'v', ARGV[6]) end
if ARGV[3] == 'granted' then
  redis.call('HSET', KEYS[1], 's', 'granted', 'ap', ARGV[5])
else
  redis.call('HSET', KEYS[1], 's', ARGV[3], 'f', ARGV[4])
  -- @finish_no
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
