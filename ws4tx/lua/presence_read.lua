-- ws4tx: read the presence of one facility (setting PRESENCE), or of one of its
-- audiences (a channel). Loaded by the Django side, run by the server too.
--
-- KEYS[1] connections, KEYS[2] info, KEYS[3] users (naming.presence_keys).
-- ARGV[1] "stats": returns {connections, distinct users} (ZCOUNT: O(log n));
--         "list": returns the JSON entries of the live connections.
-- ARGV[2] (optional) the head of one audience's keys (see presence.lua): read its
--         connections (head .. ":c") and users (head .. ":u") instead of the facility's.
-- Only connections whose expiry (Redis time) is still ahead count: those of a node that
-- died are ignored until a node trims them.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local after = "(" .. now
local conns, users = KEYS[1], KEYS[3]
if ARGV[2] and ARGV[2] ~= "" then
  conns, users = ARGV[2] .. ":c", ARGV[2] .. ":u"
end
if ARGV[1] == "stats" then
  return {redis.call("ZCOUNT", conns, after, "+inf"),
          redis.call("ZCOUNT", users, after, "+inf")}
end
local ids = redis.call("ZRANGEBYSCORE", conns, after, "+inf")
if #ids == 0 then
  return {}
end
local entries = {}
for i = 1, #ids, 1000 do
  local chunk = redis.call("HMGET", KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
  for _, entry in ipairs(chunk) do
    if entry then
      entries[#entries + 1] = entry
    end
  end
end
return entries
