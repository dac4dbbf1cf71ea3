-- Fenced XACK: acknowledge entries only while holding the partition's lease.
-- XACK names no consumer, so a member whose lease expired could otherwise ack entries the
-- new owner reclaimed but has not handled yet, and they would be lost. The check and the
-- XACK run as one script, so nothing can take the lease in between.
-- KEYS[1]  streamq:lease:<group>:<topic>:<partition>   string: the holder's token
-- KEYS[2]  <topic>:<partition>                         the partition's stream
-- ARGV[1]  token     ARGV[2]  consumer group     ARGV[3..]  entry IDs
-- Returns the number acknowledged, or -1 if the lease is not ours (nothing acknowledged).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return -1
end
return redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 3))
