-- ws4tx: read the histories of several channels, each as history.lua reads one, in one
-- call (the server's batched reads: a reconnect recovers all its channels in one round
-- trip). The keys are the ones history.lua takes, in the same formats; on a Redis Cluster
-- every key of one call is on one slot (the caller groups channels by slot).
--
-- KEYS[2i-1], KEYS[2i]: the stream and the meta hash of the i-th channel.
-- ARGV[4i-3..4i]: its since ("" for none), limit (0 for none), history ttl (seconds) and
-- the epoch for a channel without one, as history.lua's ARGV[1..4].
--
-- Returns, for each channel in turn, what history.lua returns:
-- {epoch, last offset, {{id, {"d", payload}}, ...}}.
local replies = {}
for i = 1, #KEYS / 2 do
  local stream, metakey = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 4 * (i - 1)
  local since, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
  local meta = redis.call("HMGET", metakey, "e", "s")
  local epoch, top = meta[1], meta[2]
  if not epoch then
    epoch = ARGV[base + 4]
    top = 0
    redis.call("DEL", stream)
    redis.call("HSET", metakey, "e", epoch, "s", 0)
  end
  redis.call("EXPIRE", metakey, ARGV[base + 3])
  local entries
  if since ~= "" then
    local start = tostring(tonumber(since) + 1)
    if limit > 0 then
      entries = redis.call("XRANGE", stream, start, "+", "COUNT", limit)
    else
      entries = redis.call("XRANGE", stream, start, "+")
    end
  else
    if limit > 0 then
      local newest = redis.call("XREVRANGE", stream, "+", "-", "COUNT", limit)
      entries = {}
      for j = #newest, 1, -1 do
        entries[#entries + 1] = newest[j]
      end
    else
      entries = redis.call("XRANGE", stream, "-", "+")
    end
  end
  replies[i] = {epoch, tonumber(top or 0), entries}
end
return replies
