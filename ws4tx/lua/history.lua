-- ws4tx: read the history of one channel with its epoch and last offset, atomically.
-- Loaded by both halves, like publish.lua.
--
-- KEYS[1] the channel's stream, KEYS[2] its meta hash.
-- ARGV[1] since: "" for none, else an offset (entries after it are returned),
-- ARGV[2] limit: 0 for none, ARGV[3] the history ttl (seconds),
-- ARGV[4] an epoch for a channel without one.
--
-- A channel without a meta hash gets one here (epoch ARGV[4], offset 0), as publish.lua
-- would make it: a client that read the history before the first publish keeps a valid
-- epoch. Reading refreshes the meta hash's ttl.
--
-- Without since: the last <limit> entries (all without a limit); with since: the first
-- <limit> entries after it. Oldest first either way.
-- Returns {epoch, last offset, {{id, {"d", payload}}, ...}}.
local meta = redis.call("HMGET", KEYS[2], "e", "s")
local epoch, top = meta[1], meta[2]
if not epoch then
  epoch = ARGV[4]
  top = 0
  redis.call("DEL", KEYS[1])
  redis.call("HSET", KEYS[2], "e", epoch, "s", 0)
end
redis.call("EXPIRE", KEYS[2], ARGV[3])
local limit = tonumber(ARGV[2])
local entries
if ARGV[1] ~= "" then
  local start = tostring(tonumber(ARGV[1]) + 1)
  if limit > 0 then
    entries = redis.call("XRANGE", KEYS[1], start, "+", "COUNT", limit)
  else
    entries = redis.call("XRANGE", KEYS[1], start, "+")
  end
else
  if limit > 0 then
    local newest = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", limit)
    entries = {}
    for i = #newest, 1, -1 do
      entries[#entries + 1] = newest[i]
    end
  else
    entries = redis.call("XRANGE", KEYS[1], "-", "+")
  end
end
return {epoch, tonumber(top or 0), entries}
