-- ws4tx: update the presence of one facility (setting PRESENCE), atomically.
-- Run by the server (txredisapi's EVALSHA/EVAL) once per batch of joins, leaves and
-- refreshes: one call per facility, never one per client.
--
-- KEYS[1] connections (zset id -> expiry ms), KEYS[2] info (hash id -> JSON),
-- KEYS[3] users (zset user -> latest expiry ms), KEYS[4] audiences (hash id -> the
-- connection's audiences, space-separated); see naming.presence_keys.
-- ARGV[1] the ttl (ms), ARGV[2] the prefix of a user's own zset of connections (in the
-- same hash tag as KEYS), ARGV[3] the prefix of the audiences' keys, then groups of five:
-- op ("+" join or refresh, "-" leave), connection id, user ("" for anonymous), info (""
-- keeps what is there), audiences ("" for none, or on a leave: those it joined).
--
-- Each audience a (a channel the connection listens to: "broadcast", "user:<name>",
-- "group:<name>", "session:<id>", names %-quoted) has the same three structures as the
-- facility under ARGV[3] .. a: ":c" (connections), ":u" (users), ":u:" .. user.
--
-- Time is Redis's (TIME), so every node and reader agrees on it. Expired connections
-- (a node that died stopped refreshing them) are trimmed here and returned.
-- Returns the ids of the connections trimmed because they expired.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local expiry = now + ttl
local conns, info, users, audiences = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local uprefix, aprefix = ARGV[2], ARGV[3]

local function recount(usersKey, ukey, user)
  redis.call("ZREMRANGEBYSCORE", ukey, "-inf", now)
  local top = redis.call("ZREVRANGE", ukey, 0, 0, "WITHSCORES")
  if top[1] then
    redis.call("ZADD", usersKey, top[2], user)
  else
    redis.call("ZREM", usersKey, user)
  end
end

local function join(c, u, uzprefix, conn, user)
  redis.call("ZADD", c, expiry, conn)
  redis.call("PEXPIRE", c, ttl)
  if user ~= "" then
    local ukey = uzprefix .. user
    redis.call("ZADD", ukey, expiry, conn)
    redis.call("PEXPIRE", ukey, ttl)
    redis.call("ZADD", u, "GT", expiry, user)
    redis.call("PEXPIRE", u, ttl)
  end
end

local function leave(c, u, uzprefix, conn, user)
  redis.call("ZREM", c, conn)
  if user ~= "" then
    redis.call("ZREM", uzprefix .. user, conn)
    recount(u, uzprefix .. user, user)
  end
end

local function each(list, f)
  for a in string.gmatch(list, "%S+") do
    local head = aprefix .. a
    f(head .. ":c", head .. ":u", head .. ":u:")
  end
end

for i = 4, #ARGV, 5 do
  local op, conn, user, data, mine = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4]
  if op == "+" then
    join(conns, users, uprefix, conn, user)
    if data ~= "" then
      redis.call("HSET", info, conn, data)
    end
    if mine ~= "" then
      redis.call("HSET", audiences, conn, mine)
    end
    each(mine, function(c, u, uz) join(c, u, uz, conn, user) end)
  else
    if mine == "" then
      mine = redis.call("HGET", audiences, conn) or ""
    end
    leave(conns, users, uprefix, conn, user)
    redis.call("HDEL", info, conn)
    redis.call("HDEL", audiences, conn)
    each(mine, function(c, u, uz) leave(c, u, uz, conn, user) end)
  end
end

local gone = redis.call("ZRANGEBYSCORE", conns, "-inf", now, "LIMIT", 0, 1000)
if #gone > 0 then
  local theirs = redis.call("HMGET", audiences, unpack(gone))
  for j, conn in ipairs(gone) do
    if theirs[j] then
      each(theirs[j], function(c) redis.call("ZREM", c, conn) end)
    end
  end
  redis.call("ZREM", conns, unpack(gone))
  redis.call("HDEL", info, unpack(gone))
  redis.call("HDEL", audiences, unpack(gone))
end
redis.call("ZREMRANGEBYSCORE", users, "-inf", now)
redis.call("PEXPIRE", conns, ttl)
redis.call("PEXPIRE", info, ttl)
redis.call("PEXPIRE", users, ttl)
if redis.call("EXISTS", audiences) == 1 then
  redis.call("PEXPIRE", audiences, ttl)
end
return gone
