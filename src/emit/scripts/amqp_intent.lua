-- Records the intent to publish due fires on RabbitMQ, before the publish: if this replica
-- still holds the leader lock, each fire whose entry's recorded last fire time is older gets
-- its intent (the message with its task id) recorded, so that if this leader dies between
-- the publish and its confirm, the next one republishes the very same message.
--
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:last_run, KEYS[3] = {ns}:amqp_intents.
-- ARGV[1] = lease token, then 4 values per fire, in order: entry, fire_at_ms, intent field
-- (entry NUL fire_at_ms), intent value.
-- Returns {0} when the lock does not hold the token (nothing written), else {1, outcomes}
-- with one character per fire: 'S' to publish (recorded now, or an intent already pending
-- for it, kept as it was), 'A' already sent; for the first fires only while the last runs
-- are a small listpack (listpack.lua): the caller sends the rest again.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end

local n = listpack_allowance((#ARGV - 1) / 4, {{KEYS[2], 1, 0}, {KEYS[3], 0, 1}})
local last = {}
local out = {}
for i = 0, n - 1 do
  local b = 2 + i * 4
  local e, at = ARGV[b], tonumber(ARGV[b + 1])
  local prev = last[e]
  if prev == nil then
    prev = tonumber(redis.call('HGET', KEYS[2], e)) -- false (missing) -> nil
  end
  if prev == nil or prev < at then
    redis.call('HSETNX', KEYS[3], ARGV[b + 2], ARGV[b + 3])
    last[e] = at
    out[i + 1] = 'S'
  else
    out[i + 1] = 'A'
  end
end
return {1, table.concat(out)}
