-- Renew a partition lease if this member still holds it.
-- KEYS[1]  streamq:lease:<group>:<topic>:<partition>   string: the holder's token
-- ARGV[1]  token     ARGV[2]  ttl in milliseconds
-- Returns 1 if renewed, 0 if the lease expired or belongs to someone else.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
