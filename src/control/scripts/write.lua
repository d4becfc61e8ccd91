-- Writes the leader's control changes while the lock holds its token, in one step.
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:control:pauses, KEYS[3] = {ns}:control:skipped_through,
-- KEYS[4] = {ns}:control:skips, KEYS[5] = {ns}:control:last_task,
-- KEYS[6] = {ns}:control:leader_since, KEYS[7] = {ns}:control:first_run,
-- KEYS[8] = {ns}:control:missed (sorted set, member entry US ms, score ms);
-- ARGV[1] = token, ARGV[2] = JSON, ARGV[3] = how many missed fire times to keep
-- {"pauses": [[entry, pause JSON or ""]], "through": [[entry, ms]], "skips": [[field, n]],
--  "tasks": [[entry, task id]], "since": "epoch:ms" or "", "first": [[entry, ms]],
--  "missed": [[member, ms]]}.
-- Returns 1 if written, 0 if the token no longer holds (nothing written).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local u = cjson.decode(ARGV[2])
for _, p in ipairs(u.pauses) do
  if p[2] == '' then
    redis.call('HDEL', KEYS[2], p[1])
  else
    redis.call('HSET', KEYS[2], p[1], p[2])
  end
end
for _, t in ipairs(u.through) do
  local old = tonumber(redis.call('HGET', KEYS[3], t[1]) or '')
  if old == nil or old < t[2] then
    redis.call('HSET', KEYS[3], t[1], string.format('%d', t[2]))
  end
end
for _, s in ipairs(u.skips) do
  redis.call('HINCRBY', KEYS[4], s[1], s[2])
end
for _, t in ipairs(u.tasks) do
  redis.call('HSET', KEYS[5], t[1], t[2])
end
for _, f in ipairs(u.first) do
  redis.call('HSETNX', KEYS[7], f[1], string.format('%d', f[2]))
end
if #u.missed > 0 then
  for _, m in ipairs(u.missed) do
    redis.call('ZADD', KEYS[8], m[2], m[1])
  end
  redis.call('ZREMRANGEBYRANK', KEYS[8], 0, -(tonumber(ARGV[3]) + 1))
end
if u.since ~= '' then
  redis.call('SET', KEYS[6], u.since)
end
return 1
