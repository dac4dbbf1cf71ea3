-- Fenced state: store a partition's state only while holding its lease (the schedule's last
-- fired ticks). A member whose lease lapsed while it was frozen must not overwrite what its
-- heir saved since, so the check and the write run as one script.
-- KEYS[1]  streamq:lease:<group>:<topic>:<partition>   string: the holder's token
-- KEYS[2]  streamq:state:<group>:<topic>:<partition>   hash {offset, state}
-- ARGV[1]  token     ARGV[2]  offset     ARGV[3]  state
-- Returns 1 when stored, -1 if the lease is not ours (nothing stored).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return -1
end
redis.call('HSET', KEYS[2], 'offset', ARGV[2], 'state', ARGV[3])
return 1
