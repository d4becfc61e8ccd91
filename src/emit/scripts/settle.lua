-- Records the last runs of committed batches and forgets them; with ARGV[2] = 'all' (the
-- start of a term, only by the lock holder) also finishes batches partly committed
-- (commit.lua's 'p', with publish.lua's publish_batch) and rolls back every batch never committed. Bounded: at most ARGV[5]
-- entries recorded plus messages moved per call, so Redis is never held for long; the
-- caller calls again while the reply says there is more; fewer while the hashes are small
-- listpacks (listpack.lua). A batch partly recorded simply
-- has fewer entries left: recording is idempotent (only a newer fire time is written).
--
-- KEYS[1] = {ns}:leader, KEYS[2] = {ns}:last_run, KEYS[3] = {ns}:run_count,
-- KEYS[4] = {ns}:fingerprint, KEYS[5] = {ns}:batches, KEYS[6] = {ns}:control:last_task,
-- KEYS[7] = {ns}:control:first_run.
-- A batch's hash maps entry -> "at fingerprint" or "at fingerprint<US>task id": with the
-- task id, recording a run also records it as the entry's last task (what the overlap
-- policies wait for) and, if none is, as its first regular run, in the same step.
-- ARGV[1] = lease token (checked for 'all' only), ARGV[2] = 'one' or 'all',
-- ARGV[3] = batch key prefix ({ns}:batch:), ARGV[4] = the batch id for 'one',
-- ARGV[5] = the budget of this call.
-- Returns {0} when 'all' and the lock does not hold the token, else {1, settled fires,
-- rolled-back batches, 1 when more is left else 0}.

local all = ARGV[2] == 'all'
if all and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end

local CHUNK = 4000
local unpack, tonumber, tostring, min = unpack, tonumber, tostring, math.min
local budget = tonumber(ARGV[5])

local function call_chunked(cmd, key, values)
  for s = 1, #values, CHUNK do
    redis.call(cmd, key, unpack(values, s, min(s + CHUNK - 1, #values)))
  end
end

-- `rolled_back`: the batch never became visible, so the RQ job hashes it wrote go too.
-- UNLINK: a big staged list is freed off the main thread.
local function drop(batch, rolled_back)
  local dests = batch .. ':dests'
  for _, i in ipairs(redis.call('HKEYS', dests)) do
    redis.call('UNLINK', batch .. ':q' .. i)
  end
  local jobs = batch .. ':jobs'
  if rolled_back then
    local keys = redis.call('SMEMBERS', jobs)
    for s = 1, #keys, CHUNK do
      redis.call('UNLINK', unpack(keys, s, min(s + CHUNK - 1, #keys)))
    end
  end
  redis.call('UNLINK', batch, dests, jobs)
end

-- Records up to `budget` of the batch's entries and removes them from it; true when none
-- is left.
local function settle(batch)
  if budget <= 0 then return false end
  local take = listpack_allowance(budget, {{batch, 2, 0}, {KEYS[2], 1, 1}, {KEYS[3], 1, 1},
    {KEYS[4], 0, 1}, {KEYS[6], 0, 1}, {KEYS[7], 1, 1}})
  local flat = redis.call('HRANDFIELD', batch, take, 'WITHVALUES')
  local names = {}
  for j = 1, #flat, 2 do
    names[#names + 1] = flat[j]
  end
  local lr_out, rc_out, fp_out, lt_out, fr, fr_at = {}, {}, {}, {}, {}, {}
  for s = 1, #names, CHUNK do
    local stop = min(s + CHUNK - 1, #names)
    local lr = redis.call('HMGET', KEYS[2], unpack(names, s, stop))
    local rc = redis.call('HMGET', KEYS[3], unpack(names, s, stop))
    for j = 1, stop - s + 1 do
      local k = s + j - 1
      local e = names[k]
      local v = flat[2 * k]
      local sp = string.find(v, ' ', 1, true)
      local at_text = string.sub(v, 1, sp - 1)
      local prev = tonumber(lr[j])
      if prev == nil or prev < tonumber(at_text) then
        lr_out[#lr_out + 1] = e
        lr_out[#lr_out + 1] = at_text
        rc_out[#rc_out + 1] = e
        rc_out[#rc_out + 1] = tostring((tonumber(rc[j]) or 0) + 1)
        local fp = string.sub(v, sp + 1)
        local us = string.find(fp, '\31', 1, true)
        if us then
          lt_out[#lt_out + 1] = e
          lt_out[#lt_out + 1] = string.sub(fp, us + 1)
          fr[#fr + 1] = e
          fr_at[#fr] = at_text
          fp = string.sub(fp, 1, us - 1)
        end
        fp_out[#fp_out + 1] = e
        fp_out[#fp_out + 1] = fp
      end
    end
  end
  if #lr_out > 0 then
    call_chunked('HSET', KEYS[2], lr_out)
    call_chunked('HSET', KEYS[3], rc_out)
    call_chunked('HSET', KEYS[4], fp_out)
  end
  if #lt_out > 0 then
    call_chunked('HSET', KEYS[6], lt_out)
    -- HSETNX one by one costs a call per entry; once every entry has a first run (all but
    -- the first batch) one HMGET finds none to write.
    local fr_out = {}
    for s = 1, #fr, CHUNK do
      local stop = min(s + CHUNK - 1, #fr)
      local have = redis.call('HMGET', KEYS[7], unpack(fr, s, stop))
      for j = 1, stop - s + 1 do
        if not have[j] then
          fr_out[#fr_out + 1] = fr[s + j - 1]
          fr_out[#fr_out + 1] = fr_at[s + j - 1]
        end
      end
    end
    if #fr_out > 0 then call_chunked('HSET', KEYS[7], fr_out) end
  end
  if #names > 0 then
    call_chunked('HDEL', batch, names)
  end
  budget = budget - #names
  return redis.call('EXISTS', batch) == 0, #lr_out / 2
end

local settled, rolled_back, more = 0, 0, 0
local ids
if all then
  ids = redis.call('HKEYS', KEYS[5])
else
  ids = {ARGV[4]}
end
for _, id in ipairs(ids) do
  local status = redis.call('HGET', KEYS[5], id)
  local batch = ARGV[3] .. id
  if all and status == 'p' then
    local done
    done, budget = publish_batch(batch, budget)
    if done then
      redis.call('HSET', KEYS[5], id, 'c')
      status = 'c'
    else
      more = 1
      break
    end
  end
  if status == 'c' then
    local done, n = settle(batch)
    settled = settled + (n or 0)
    if done then
      drop(batch, false)
      redis.call('HDEL', KEYS[5], id)
    else
      more = 1
      break
    end
  elseif all then
    drop(batch, true)
    redis.call('HDEL', KEYS[5], id)
    if status then rolled_back = rolled_back + 1 end
  end
end
return {1, settled, rolled_back, more}
