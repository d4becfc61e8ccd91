-- Phase one of a fire time's emission: parks fires in the store ahead of their fire time,
-- invisible to workers, if this replica still holds the leader lock. Nothing is recorded as
-- sent here; commit.lua makes the batch visible at the instant and settle.lua records it.
--
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:last_run, KEYS[3] = {ns}:batches,
-- KEYS[4] = the batch ({ns}:batch:<epoch>:<at>, hash entry -> "at fingerprint"),
-- KEYS[5] = the batch's destinations (hash index -> queue list), KEYS[6..] = the distinct
-- destination lists of this call.
-- ARGV[1] = lease token, ARGV[2] = batch id, ARGV[3] = expiry of the staged keys in ms
-- (a safety net only: recover.lua removes them), then 5 values per fire:
--   entry, fire_at_ms, schedule fingerprint, list index i (the list is KEYS[5 + i]), payload.
-- An RQ job (list index 'r' .. i, payload msgpack [job id, expire seconds or '', field, value, ...]) has its hash
-- rq:job:<id> written now (no worker looks for it before its id is in the queue), listed
-- under <batch>:jobs so a rollback deletes it; its destination is recorded as 'r:' .. list.
-- Returns {0} when the lock does not hold the token, {2} when the batch was committed
-- already, else {1, outcomes} with one character per fire: 'S' staged, 'A' already sent or
-- already in this batch. While the last runs or the batch are small listpacks it takes only
-- the first fires (listpack.lua), with fewer outcomes than fires: the caller sends the rest
-- again.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
local id = ARGV[2]
local status = redis.call('HGET', KEYS[3], id)
if status and status ~= 's' then
  return {2}
end
redis.call('HSET', KEYS[3], id, 's')

local CHUNK = 4000 -- unpack() is limited by the Lua C stack; even, for name/value pairs
local unpack, tonumber, min = unpack, tonumber, math.min
local argv, keys = ARGV, KEYS
local batch, dests_key = KEYS[4], KEYS[5]
local ttl = ARGV[3]

local function call_chunked(cmd, key, values)
  for s = 1, #values, CHUNK do
    redis.call(cmd, key, unpack(values, s, min(s + CHUNK - 1, #values)))
  end
end

-- The batch's destination lists, numbered across calls: staged list i holds what goes to
-- destination i.
local dest_index, ndest = {}, 0
local flat = redis.call('HGETALL', dests_key)
for j = 1, #flat, 2 do
  local i = tonumber(flat[j])
  dest_index[flat[j + 1]] = i
  if i > ndest then ndest = i end
end

local n = listpack_allowance((#argv - 3) / 5, {{keys[2], 1, 0}, {batch, 1, 1}})
local names = {}
for i = 0, n - 1 do
  names[i + 1] = argv[4 + i * 5]
end
local last, held = {}, {}
for s = 1, n, CHUNK do
  local stop = min(s + CHUNK - 1, n)
  local lr = redis.call('HMGET', keys[2], unpack(names, s, stop))
  local st = redis.call('HMGET', batch, unpack(names, s, stop))
  for j = 1, stop - s + 1 do
    local e = names[s + j - 1]
    last[e] = tonumber(lr[j])
    held[e] = st[j] ~= false
  end
end

local pushes, out, meta = {}, {}, {}
local rq_dest = {} -- staged list index -> true for RQ destinations
local job_keys = {}
for i = 0, n - 1 do
  local b = 4 + i * 5
  local e = argv[b]
  local at = tonumber(argv[b + 1])
  local prev = last[e]
  if (prev == nil or prev < at) and not held[e] then
    held[e] = true
    local li = argv[b + 3]
    local is_rq = string.byte(li, 1) == 114
    local dest
    if is_rq then
      dest = 'r:' .. keys[5 + tonumber(string.sub(li, 2))]
    else
      dest = keys[5 + tonumber(li)]
    end
    local di = dest_index[dest]
    if di == nil then
      ndest = ndest + 1
      di = ndest
      dest_index[dest] = di
      redis.call('HSET', dests_key, di, dest)
    end
    local q = pushes[di]
    if q == nil then
      q = {}
      pushes[di] = q
    end
    if is_rq then
      local job = cmsgpack.unpack(argv[b + 4])
      local key = 'rq:job:' .. job[1]
      local fields = {}
      for k = 3, #job do fields[k - 2] = job[k] end
      call_chunked('HSET', key, fields)
      if job[2] ~= '' then redis.call('EXPIRE', key, job[2]) end
      job_keys[#job_keys + 1] = key
      rq_dest[di] = true
      q[#q + 1] = job[1]
    else
      q[#q + 1] = argv[b + 4]
    end
    meta[#meta + 1] = e
    -- Keep the decimal text as given: Lua numbers print 14 significant digits.
    meta[#meta + 1] = argv[b + 1] .. ' ' .. argv[b + 2]
    out[i + 1] = 'S'
  else
    out[i + 1] = 'A'
  end
end

-- LPUSH keeps the order BRPOP takes them in (RPUSH: RQ's LPOP); commit.lua moves the list
-- as a whole.
for di, q in pairs(pushes) do
  local staged = batch .. ':q' .. di
  if rq_dest[di] then
    call_chunked('RPUSH', staged, q)
  else
    call_chunked('LPUSH', staged, q)
  end
  redis.call('PEXPIRE', staged, ttl)
end
if #job_keys > 0 then
  local jobs = batch .. ':jobs'
  call_chunked('SADD', jobs, job_keys)
  redis.call('PEXPIRE', jobs, ttl)
end
if #meta > 0 then
  call_chunked('HSET', batch, meta)
end
redis.call('PEXPIRE', batch, ttl)
redis.call('PEXPIRE', dests_key, ttl)

return {1, table.concat(out)}
