-- Takes the leader lock if it is free and bumps the fencing epoch in the same atomic step,
-- so every acquisition has its own epoch and no two holders ever share one.
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:epoch; ARGV[1] = token, ARGV[2] = ttl in ms.
-- Returns the new epoch, or 0 when the lock is held.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
