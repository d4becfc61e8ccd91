-- Emits one batch of due fires atomically: if this replica still holds the leader lock, push
-- every fire whose entry's recorded last fire time is older, and record the new last runs.
--
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:last_run, KEYS[3] = {ns}:run_count,
-- KEYS[4] = {ns}:fingerprint, KEYS[5..] = the distinct destination lists.
-- ARGV[1] = lease token, then 5 values per fire, in order:
--   entry, fire_at_ms, schedule fingerprint, list index i (the list is KEYS[4 + i]), payload.
-- A Celery message's list index is a number and its payload the envelope (LPUSH, as kombu);
-- an RQ job's index is 'r' .. i and its payload msgpack [job id, expire seconds or '', field, value, ...]: the hash
-- rq:job:<id> is written, the id RPUSHed (as RQ does) and the queue added to rq:queues.
-- Returns {0} when the lock does not hold the token (nothing written), else
-- {1, outcomes} with outcomes one character per fire: 'S' sent, 'A' already sent. While the
-- entries' hashes are small listpacks it takes only the first fires (listpack.lua) and has
-- fewer outcomes than fires: the caller sends the rest again.
--
-- Speed: a constant number of Redis commands per batch (HMGET, one multi-value LPUSH per
-- list, multi-field HSETs) instead of five per fire; the per-fire work is plain Lua.
-- unpack() is limited by the Lua C stack (~8000), hence the chunks of CHUNK values.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end

local CHUNK = 4000 -- even, so name/value pairs never straddle two chunks
local unpack, tonumber, tostring = unpack, tonumber, tostring
local argv, keys = ARGV, KEYS
local min = math.min

local function call_chunked(cmd, key, values)
  for s = 1, #values, CHUNK do
    redis.call(cmd, key, unpack(values, s, min(s + CHUNK - 1, #values)))
  end
end

local n = listpack_allowance((#argv - 1) / 5, {{keys[2], 1, 1}, {keys[3], 1, 1},
  {keys[4], 0, 1}})

-- The entries' state, read with one HMGET per hash (repeated names simply read twice).
local names = {}
for i = 0, n - 1 do
  names[i + 1] = argv[2 + i * 5]
end

local last, count = {}, {}
for s = 1, n, CHUNK do
  local stop = min(s + CHUNK - 1, n)
  local lr = redis.call('HMGET', keys[2], unpack(names, s, stop))
  local rc = redis.call('HMGET', keys[3], unpack(names, s, stop))
  for j = 1, stop - s + 1 do
    local e = names[s + j - 1]
    last[e] = tonumber(lr[j]) -- false (missing) -> nil: older than any fire
    count[e] = tonumber(rc[j]) or 0
  end
end

local pushes = {}   -- list index -> payloads in fire order
local cunpack = cmsgpack.unpack
local jobs = {}     -- RQ: job key -> {field, value, ...}
local out = {}
local sent_at, sent_fp = {}, {} -- entry -> fire time as sent (text), fingerprint
local sent_names = {}
for i = 0, n - 1 do
  local b = 2 + i * 5
  local e = argv[b]
  local at = tonumber(argv[b + 1])
  local prev = last[e]
  if prev == nil or prev < at then
    local li = argv[b + 3]
    local q = pushes[li]
    if q == nil then
      q = {n = 0}
      pushes[li] = q
    end
    local qn = q.n + 1
    q.n = qn
    if string.byte(li, 1) == 114 then -- 'r': an RQ job
      local job = cunpack(argv[b + 4])
      local id = job[1]
      local fields = {}
      for k = 3, #job do fields[k - 2] = job[k] end
      jobs['rq:job:' .. id] = {fields = fields, expire = job[2]}
      q[qn] = id
    else
      q[qn] = argv[b + 4]
    end
    last[e] = at
    count[e] = count[e] + 1
    if sent_at[e] == nil then
      sent_names[#sent_names + 1] = e
    end
    -- Keep the decimal text as given: Lua numbers print 14 significant digits.
    sent_at[e] = argv[b + 1]
    sent_fp[e] = argv[b + 2]
    out[i + 1] = 'S'
  else
    out[i + 1] = 'A'
  end
end

-- RQ hashes first: a worker never pops an id whose hash is not there yet.
for key, job in pairs(jobs) do
  call_chunked('HSET', key, job.fields)
  if job.expire ~= '' then redis.call('EXPIRE', key, job.expire) end
end
-- LPUSH of several values pushes them in order, so BRPOP takes them oldest first; RQ's
-- RPUSH likewise for its LPOP.
for li, q in pairs(pushes) do
  if string.byte(li, 1) == 114 then
    local list = keys[4 + tonumber(string.sub(li, 2))]
    call_chunked('RPUSH', list, q)
    redis.call('SADD', 'rq:queues', list)
  else
    call_chunked('LPUSH', keys[4 + tonumber(li)], q)
  end
end

if #sent_names > 0 then
  local lr, rc, fp = {}, {}, {}
  for i, e in ipairs(sent_names) do
    local j = 2 * i
    lr[j - 1] = e
    lr[j] = sent_at[e]
    rc[j - 1] = e
    rc[j] = tostring(count[e])
    fp[j - 1] = e
    fp[j] = sent_fp[e]
  end
  call_chunked('HSET', keys[2], lr)
  call_chunked('HSET', keys[3], rc)
  call_chunked('HSET', keys[4], fp)
end

return {1, table.concat(out)}
