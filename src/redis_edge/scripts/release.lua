-- Deletes the lock only if it still holds this replica's token (compare-and-DEL), so a
-- leader that lost the lock can never delete its successor's.
-- KEYS[1] = {ns}:leader; ARGV[1] = token. Returns 1 if deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
