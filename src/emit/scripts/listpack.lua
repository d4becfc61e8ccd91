-- How many fields a call may touch in hashes that may be listpacks. A hash of few entries
-- (up to hash-max-listpack-entries, 512 by default) is one flat list, and every field looked
-- up or written in it scans it: 150 last runs recorded into hashes of 450 entries held Redis
-- 10 ms, against 2 ms once they are hash tables. So a call that touches many fields at once
-- scales its share down while its hashes are small, to at most SCAN_BUDGET entries scanned
-- (about 1 ms of Redis on a 2-core server); it costs nothing once they are hash tables.
--
-- `hashes` lists {key, reads, writes}: how many commands of the call look fields up in the
-- key, and how many write fields into it (each write may add the fields, so the list grows
-- on the way). A hash that does not exist yet costs nothing to read.
-- Returns min(want, k) for the largest k that keeps the scans within budget, at least 1.
local SCAN_BUDGET = 50000

local function listpack_allowance(want, hashes)
  -- k fields looked up in a listpack of len entries scan k * len; k fields written into it
  -- scan at most k * len + k * k / 2: a*k^2 + b*k summed over the listpacks.
  local a, b = 0, 0
  for _, h in ipairs(hashes) do
    local enc = redis.call('OBJECT', 'ENCODING', h[1])
    if enc ~= 'hashtable' then -- 'listpack', 'ziplist' (Redis 6) or none yet (false)
      local len = enc and redis.call('HLEN', h[1]) or 0
      a = a + h[3] / 2
      b = b + (h[2] + h[3]) * len
    end
  end
  if a == 0 and b == 0 then
    return want
  end
  local k
  if a == 0 then
    k = math.floor(SCAN_BUDGET / b)
  else
    k = math.floor((-b + math.sqrt(b * b + 4 * a * SCAN_BUDGET)) / (2 * a))
  end
  return math.max(1, math.min(want, k))
end
