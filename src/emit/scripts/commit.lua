-- Phase two: at the fire instant, makes a staged batch visible to workers, if this replica
-- still holds the leader lock. O(1) per destination when its queue is empty (RENAME); else
-- the staged messages are moved one by one, oldest first, so the queue's order is what
-- LPUSH at the instant would have made — at most ARGV[4] of them per call, so a busy queue
-- never holds Redis for long: the batch is then 'p' (partly committed) and the caller calls
-- again. A 'p' batch is never rolled back: recovery (settle.lua 'all') finishes it.
--
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:batches, KEYS[3] = the batch's destinations hash.
-- ARGV[1] = lease token, ARGV[2] = batch id, ARGV[3] = the batch key (staged lists are
-- <batch>:q<index>), ARGV[4] = most messages moved one by one in this call.
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
local budget = tonumber(ARGV[4])

-- Moves up to `budget` of the oldest staged messages onto a busy `dest`, one server-side
-- move each (no Lua string copies: measured faster than LRANGE + a multi-value push), in the
-- order a push at the instant would have made; returns the budget left.
local function move(staged, dest, rq, budget)
  while budget > 0 do
    local moved
    if rq then
      moved = redis.call('LMOVE', staged, dest, 'LEFT', 'RIGHT')
    else
      moved = redis.call('RPOPLPUSH', staged, dest)
    end
    if not moved then break end
    budget = budget - 1
  end
  return budget
end
local flat = redis.call('HGETALL', KEYS[3])
for j = 1, #flat, 2 do
  local staged = ARGV[3] .. ':q' .. flat[j]
  local dest = flat[j + 1]
  -- 'r:' marks an RQ queue: RPUSHed, taken from the head, registered in rq:queues.
  local rq = string.sub(dest, 1, 2) == 'r:'
  if rq then dest = string.sub(dest, 3) end
  if redis.call('EXISTS', staged) == 1 then
    if redis.call('EXISTS', dest) == 0 then
      redis.call('RENAME', staged, dest)
      redis.call('PERSIST', dest)
    else
      budget = move(staged, dest, rq, budget)
    end
    if rq then redis.call('SADD', 'rq:queues', dest) end
    if budget == 0 and redis.call('EXISTS', staged) == 1 then
      redis.call('HSET', KEYS[2], ARGV[2], 'p')
      return {3}
    end
  end
end
redis.call('HSET', KEYS[2], ARGV[2], 'c')
return {1}
