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
local unpack, min = unpack, math.min

-- Moves up to `budget` of the oldest staged messages onto a busy `dest` in bulk (one LRANGE,
-- one multi-value push, one LTRIM per 1,000), keeping the order a push at the instant would
-- have made; returns the budget left.
local function move(staged, dest, rq, budget)
  while budget > 0 do
    local k = min(budget, 1000)
    if rq then
      -- RQ: RPUSHed, oldest at the head.
      local part = redis.call('LRANGE', staged, 0, k - 1)
      if #part == 0 then break end
      redis.call('RPUSH', dest, unpack(part))
      redis.call('LTRIM', staged, #part, -1)
      budget = budget - #part
    else
      -- kombu: LPUSHed, oldest at the tail; push it first.
      local part = redis.call('LRANGE', staged, -k, -1)
      if #part == 0 then break end
      local rev = {}
      for i = #part, 1, -1 do rev[#rev + 1] = part[i] end
      redis.call('LPUSH', dest, unpack(rev))
      redis.call('LTRIM', staged, 0, -(#part + 1))
      budget = budget - #part
    end
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
