-- Marks published fires as sent once RabbitMQ confirmed them: if this replica still holds
-- the leader lock, records each fire's last run, run count and fingerprint (unless a later
-- fire time is recorded already) and forgets its intent, in one step.
--
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:last_run, KEYS[3] = {ns}:run_count,
-- KEYS[4] = {ns}:fingerprint, KEYS[5] = {ns}:amqp_intents.
-- ARGV[1] = lease token, then 4 values per fire: entry, fire_at_ms, fingerprint, intent field.
-- Returns {0} when the lock does not hold the token (nothing written), else {1, n}: the first
-- n fires are recorded (all of them, or fewer while the hashes are small listpacks,
-- listpack.lua); the caller sends the rest again.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end

local n = listpack_allowance((#ARGV - 1) / 4,
  {{KEYS[2], 1, 1}, {KEYS[3], 0, 1}, {KEYS[4], 0, 1}, {KEYS[5], 1, 0}})
for i = 0, n - 1 do
  local b = 2 + i * 4
  local e, at = ARGV[b], tonumber(ARGV[b + 1])
  if redis.call('HDEL', KEYS[5], ARGV[b + 3]) == 1 then
    local prev = tonumber(redis.call('HGET', KEYS[2], e))
    if prev == nil or prev < at then
      -- Keep the decimal text as given: Lua numbers print 14 significant digits.
      redis.call('HSET', KEYS[2], e, ARGV[b + 1])
      redis.call('HSET', KEYS[4], e, ARGV[b + 2])
      redis.call('HINCRBY', KEYS[3], e, 1)
    end
  end
end
return {1, n}
