-- Release a partition lease, but only our own: after expiry it may be someone else's.
-- KEYS[1]  streamq:lease:<group>:<topic>:<partition>   string: the holder's token
-- ARGV[1]  token
-- Returns 1 if released, 0 if it was not ours any more.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
