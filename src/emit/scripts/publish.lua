-- Shared by commit.lua and settle.lua, prepended to each (see emit/redis.rs): moves a staged
-- batch onto its queues. O(1) per destination when its queue is empty (RENAME); else the
-- staged messages are moved one server-side move each, oldest first, in the order a push at
-- the instant would have made, spending at most `budget` moves. A destination recorded as
-- 'r:' .. list is an RQ queue: RPUSHed, taken from the head, registered in rq:queues.
-- `skip` (optional) holds destination indexes left alone: their staged lists are pushed by
-- transactions the emitter prepared (emit/prepared.rs), and a RENAME here would push them twice.
-- A destination it cannot finish does not stop the others: an empty queue behind a busy one
-- still gets its batch at once.
-- Returns true when the whole batch is visible, and the budget left.
local function publish_batch(batch, budget, skip)
  local flat = redis.call('HGETALL', batch .. ':dests')
  local done = true
  for j = 1, #flat, 2 do
    local staged = batch .. ':q' .. flat[j]
    local dest = flat[j + 1]
    local rq = string.sub(dest, 1, 2) == 'r:'
    if rq then dest = string.sub(dest, 3) end
    if redis.call('EXISTS', staged) == 1 then
      if skip and skip[flat[j]] then
        done = false
      else
        if redis.call('EXISTS', dest) == 0 then
          redis.call('RENAME', staged, dest)
          redis.call('PERSIST', dest)
        else
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
        end
        if rq then redis.call('SADD', 'rq:queues', dest) end
        if redis.call('EXISTS', staged) == 1 then done = false end
      end
    end
  end
  return done, budget
end

