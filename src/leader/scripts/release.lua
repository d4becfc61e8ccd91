-- Deletes the lock only if it still holds this replica's token (compare-and-DEL), so a
-- leader that lost the lock can never delete its successor's; then announces the release on
-- the channel named like the lock key, so standbys try at once instead of at their next poll.
-- KEYS[1] = {ns}:leader; ARGV[1] = token. Returns 1 if deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- pcall: an ACL that does not allow the channel must not make the release fail.
  redis.pcall('PUBLISH', KEYS[1], 'released')
  return 1
end
return 0
