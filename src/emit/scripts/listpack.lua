-- How many fields a call may touch in hashes that may be listpacks. A hash of few entries
-- (up to hash-max-listpack-entries, 512 by default) is one flat list, and every field looked
-- up or written in it scans it: 150 last runs recorded into hashes of 450 entries held Redis
-- 10 ms, against 2 ms once they are hash tables. So a call that touches many fields at once
-- scales its share down while its hashes are small, to at most SCAN_BUDGET entries scanned
-- (about 1 ms of Redis on a 2-core server); it costs nothing once they are hash tables.
--
-- `hashes` lists {key, passes}: how many commands of the call go through the key's fields.
-- Returns min(want, k) for the largest k that keeps the scans within budget, at least 1.
local SCAN_BUDGET = 50000

local function listpack_allowance(want, hashes)
  -- Scanning k fields in a listpack of len entries, k of them possibly added on the way,
  -- costs at most passes * k * (len + k): a*k^2 + b*k summed over the listpacks.
  local a, b = 0, 0
  for _, h in ipairs(hashes) do
    local enc = redis.call('OBJECT', 'ENCODING', h[1])
    if enc ~= 'hashtable' then -- 'listpack', 'ziplist' (Redis 6) or none yet (false)
      local len = enc and redis.call('HLEN', h[1]) or 0
      a = a + h[2]
      b = b + h[2] * len
    end
  end
  if a == 0 then
    return want
  end
  local k = math.floor((-b + math.sqrt(b * b + 4 * a * SCAN_BUDGET)) / (2 * a))
  return math.max(1, math.min(want, k))
end
