-- Reads the holder, its remaining TTL and the epoch in one atomic step, so `status` never
-- pairs one holder with another's epoch.
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:epoch. Returns {token or false, pttl ms, epoch or false}.
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}
