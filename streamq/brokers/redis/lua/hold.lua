-- Share groups: keep the entries a member still holds its own (their idle time back to 0),
-- so no other member claims them while a long round runs. Only entries this member still
-- owns: one another member already claimed stays theirs (XCLAIM alone would take it back).
-- KEYS[1]  <topic>:<partition>   the stream
-- ARGV[1]  consumer group   ARGV[2]  this member   ARGV[3..]  entry IDs
-- Returns how many were kept.
local key, group, member = KEYS[1], ARGV[1], ARGV[2]
local kept = 0
for i = 3, #ARGV do
    local found = redis.call('XPENDING', key, group, ARGV[i], ARGV[i], 1)
    if found[1] and found[1][2] == member then
        redis.call('XCLAIM', key, group, member, 0, ARGV[i], 'JUSTID')
        kept = kept + 1
    end
end
return kept
