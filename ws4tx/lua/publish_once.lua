-- ws4tx: publish one message with an idempotency key to a channel of a facility WITHOUT
-- history, atomically (a facility with history uses publish.lua's KEYS[4]).
-- Loaded by the Django side (redis-py's register_script).
--
-- KEYS[1] the record of the idempotency key (naming.once_key), KEYS[2] the channel's
-- last-message key (the channel name: ws4redis's replay).
-- ARGV[1] the channel, ARGV[2] the payload, ARGV[3] seconds to store the payload under
-- KEYS[2] for replay (0: not stored), ARGV[4] seconds the record is kept,
-- ARGV[5] (optional) "SPUBLISH" to publish with sharded pub/sub (a Redis Cluster).
--
-- When the record exists the message was published already: nothing is written nor
-- published. PUBLISH comes last, as in publish.lua.
--
-- Returns {receivers, repeated}: repeated is 1 when the key was published already.
if not redis.call("SET", KEYS[1], "1", "NX", "EX", ARGV[4]) then
  return {0, 1}
end
if tonumber(ARGV[3]) > 0 then
  redis.call("SET", KEYS[2], ARGV[2], "EX", ARGV[3])
end
local command = "PUBLISH"
if ARGV[5] == "SPUBLISH" then command = "SPUBLISH" end
return {redis.call(command, ARGV[1], ARGV[2]), 0}
