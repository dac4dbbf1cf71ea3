-- Exactly once: a commit's outputs (XADD) and its inputs' acknowledgements (XACK) as one
-- script, fenced by every input partition's lease. Redis runs a script alone, so no reader
-- sees the outputs without the acks, nor the other way round, and a member that lost a lease
-- publishes nothing. Keys of one script must live on one node: on a Redis Cluster every
-- stream of the pipeline needs the same hash tag, or the script is refused.
-- KEYS[1..n]          streamq:lease:<group>:<topic>:<partition>   the input partitions' leases
-- KEYS[n+1..2n]       <topic>:<partition>                         their streams
-- KEYS[2n+1..2n+m]    <topic>:<partition>                         one per output, in order
-- ARGV[1] consumer group   ARGV[2] n   ARGV[3] MAXLEN ('' for none)
-- then n lease tokens; then n counts of entry IDs; then the IDs, partition by partition;
-- then per output: its field count, then field, value, field, value...
-- Returns 0, or -i when the lease of input partition i is not ours (nothing written), or -(n+j)
-- when output stream j holds something else than a stream (nothing written).
local group, n, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local a = 4
for i = 1, n do
    if redis.call('GET', KEYS[i]) ~= ARGV[a + i - 1] then
        return -i
    end
end
a = a + n
local m = #KEYS - 2 * n
for j = 1, m do  -- checked first: a script that fails half way keeps what it wrote
    local kind = redis.call('TYPE', KEYS[2 * n + j])['ok']
    if kind ~= 'none' and kind ~= 'stream' then
        return -(n + j)
    end
end
local counts = {}
for i = 1, n do
    counts[i] = tonumber(ARGV[a + i - 1])
end
a = a + n
local first = {}
for i = 1, n do
    first[i] = a
    a = a + counts[i]
end
for j = 1, m do
    local nf = tonumber(ARGV[a])
    local key = KEYS[2 * n + j]
    if maxlen ~= '' then
        redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, a + 1, a + nf))
    else
        redis.call('XADD', key, '*', unpack(ARGV, a + 1, a + nf))
    end
    a = a + nf + 1
end
for i = 1, n do
    local from, last = first[i], first[i] + counts[i] - 1
    while from <= last do  -- unpack has a stack limit: 1000 IDs per XACK
        local to = math.min(from + 999, last)
        redis.call('XACK', KEYS[n + i], group, unpack(ARGV, from, to))
        from = to + 1
    end
end
return 0
