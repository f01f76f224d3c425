-- Included where a script has `-- @finish_no`: shortens a finished record's life to
-- its grace period (deletes it when there is none). KEYS[1] record.
local g = tonumber(redis.call('HGET', KEYS[1], 'g')) or 0
if g <= 0 then
  redis.call('DEL', KEYS[1])
else
  local pt = redis.call('PTTL', KEYS[1])
  if pt < 0 or pt > g then redis.call('PEXPIRE', KEYS[1], g) end
end
