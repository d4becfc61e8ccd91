-- Extends the lock only if it still holds this replica's token (compare-and-PEXPIRE).
-- KEYS[1] = {ns}:leader; ARGV[1] = token, ARGV[2] = ttl in ms. Returns 1 if renewed, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
