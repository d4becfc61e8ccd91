-- Phase two: at the fire instant, makes a staged batch visible to workers, if this replica
-- still holds the leader lock (publish.lua moves it) — at most ARGV[4] messages moved one by
-- one per call, so a busy queue never holds Redis for long: the batch is then 'p' (partly
-- committed) and the caller calls again. A 'p' batch is never rolled back: recovery
-- (settle.lua 'all') finishes it.
--
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:batches, KEYS[3] = the batch's destinations hash
-- (<batch>:dests, declared; publish_batch reads it by name).
-- ARGV[1] = lease token, ARGV[2] = batch id, ARGV[3] = the batch key (staged lists are
-- <batch>:q<index>), ARGV[4] = most messages moved one by one in this call, ARGV[5..] =
-- destination indexes left to prepared transactions (emit/prepared.rs).
-- Returns {0} when the lock does not hold the token, {2} when the batch is not staged (rolled
-- back), {3} when partly committed (call again), {1} when committed (now or before).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
local status = redis.call('HGET', KEYS[2], ARGV[2])
if status == 'c' then
  return {1}
elseif status ~= 's' and status ~= 'p' then
  return {2}
end
local skip = {}
for i = 5, #ARGV do skip[ARGV[i]] = true end
local done = publish_batch(ARGV[3], tonumber(ARGV[4]), skip)
if not done then
  redis.call('HSET', KEYS[2], ARGV[2], 'p')
  return {3}
end
redis.call('HSET', KEYS[2], ARGV[2], 'c')
return {1}
