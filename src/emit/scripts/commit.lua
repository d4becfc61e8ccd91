-- Phase two: at the fire instant, makes a staged batch visible to workers, if this replica
-- still holds the leader lock. O(1) per destination when its queue is empty (RENAME); else
-- the staged messages are moved one by one, oldest first, so the queue's order is what
-- LPUSH at the instant would have made.
--
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:batches, KEYS[3] = the batch's destinations hash.
-- ARGV[1] = lease token, ARGV[2] = batch id, ARGV[3] = the batch key (staged lists are
-- <batch>:q<index>).
-- Returns {0} when the lock does not hold the token, {2} when the batch is not staged (rolled
-- back), {1} when committed (now or before).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
local status = redis.call('HGET', KEYS[2], ARGV[2])
if status == 'c' then
  return {1}
elseif status ~= 's' then
  return {2}
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
    elseif rq then
      while redis.call('LMOVE', staged, dest, 'LEFT', 'RIGHT') do
      end
    else
      while redis.call('RPOPLPUSH', staged, dest) do
      end
    end
    if rq then redis.call('SADD', 'rq:queues', dest) end
  end
end
redis.call('HSET', KEYS[2], ARGV[2], 'c')
return {1}
