-- ws4tx: update the presence of one facility (setting PRESENCE), atomically.
-- Run by the server (txredisapi's EVALSHA/EVAL) once per batch of joins, leaves and
-- refreshes: one call per facility, never one per client.
--
-- KEYS[1] connections (zset id -> expiry ms), KEYS[2] info (hash id -> JSON),
-- KEYS[3] users (zset user -> latest expiry ms); see naming.presence_keys.
-- ARGV[1] the ttl (ms), ARGV[2] the prefix of a user's own zset of connections (in the
-- same hash tag as KEYS), then groups of four: op ("+" join or refresh, "-" leave),
-- connection id, user ("" for anonymous), info ("" keeps what is there).
--
-- Time is Redis's (TIME), so every node and reader agrees on it. Expired connections
-- (a node that died stopped refreshing them) are trimmed here and returned.
-- Returns the ids of the connections trimmed because they expired.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local expiry = now + ttl
local conns, info, users, uprefix = KEYS[1], KEYS[2], KEYS[3], ARGV[2]

local function recount(user)
  local ukey = uprefix .. user
  redis.call("ZREMRANGEBYSCORE", ukey, "-inf", now)
  local top = redis.call("ZREVRANGE", ukey, 0, 0, "WITHSCORES")
  if top[1] then
    redis.call("ZADD", users, top[2], user)
  else
    redis.call("ZREM", users, user)
  end
end

for i = 3, #ARGV, 4 do
  local op, conn, user, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == "+" then
    redis.call("ZADD", conns, expiry, conn)
    if data ~= "" then
      redis.call("HSET", info, conn, data)
    end
    if user ~= "" then
      local ukey = uprefix .. user
      redis.call("ZADD", ukey, expiry, conn)
      redis.call("PEXPIRE", ukey, ttl)
      redis.call("ZADD", users, "GT", expiry, user)
    end
  else
    redis.call("ZREM", conns, conn)
    redis.call("HDEL", info, conn)
    if user ~= "" then
      redis.call("ZREM", uprefix .. user, conn)
      recount(user)
    end
  end
end

local gone = redis.call("ZRANGEBYSCORE", conns, "-inf", now, "LIMIT", 0, 1000)
if #gone > 0 then
  redis.call("ZREM", conns, unpack(gone))
  redis.call("HDEL", info, unpack(gone))
end
redis.call("ZREMRANGEBYSCORE", users, "-inf", now)
redis.call("PEXPIRE", conns, ttl)
redis.call("PEXPIRE", info, ttl)
redis.call("PEXPIRE", users, ttl)
return gone
