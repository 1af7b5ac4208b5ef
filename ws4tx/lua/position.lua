-- ws4tx: where one channel of a facility with history stands: its epoch and last offset,
-- without its messages. Loaded by the Django side (redis-py's register_script).
--
-- KEYS[1] the channel's stream, KEYS[2] its meta hash (naming.history_keys).
-- ARGV[1] the history ttl (seconds), ARGV[2] an epoch for a channel without one.
--
-- As history.lua: a channel without a meta hash gets one here (epoch ARGV[2], offset 0),
-- so that the first publish keeps the epoch a page was rendered with; reading refreshes
-- the meta hash's ttl.
-- Returns {epoch, last offset}.
local meta = redis.call("HMGET", KEYS[2], "e", "s")
local epoch, top = meta[1], meta[2]
if not epoch then
  epoch = ARGV[2]
  top = 0
  redis.call("DEL", KEYS[1])
  redis.call("HSET", KEYS[2], "e", epoch, "s", 0)
end
redis.call("EXPIRE", KEYS[2], ARGV[1])
return {epoch, tonumber(top or 0)}
