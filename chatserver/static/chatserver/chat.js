/* The demo's chat pages: one script for the broadcast, user, group and event chats.
 *
 * Chat.start() reads the page's #chat-config (what the page is) and #chat-sync (its
 * channels' recent messages and positions, rendered by chatserver.views), shows the
 * messages, and connects ws4tx.js (WS4TX) with `recover=` positions of its own, so that
 * after any reconnect the server sends exactly what the page missed (docs/protocol.md,
 * Recovery). When the server cannot (`recovered: false`) or Redis was lost meanwhile
 * (`ws4tx.resumed`), the page fetches its messages again and adds those it lacks.
 *
 * What the person sends goes through an outbox: a line shows at once (own style, "…"),
 * becomes "✓" when the server confirms it (the message comes back with its `cid`), and
 * waits while the page is disconnected, to be sent when it is back; a message the server
 * refuses is marked "✗" with the reason in words. Plain DOM, no framework; every message
 * is inserted as text, never as HTML. */
'use strict';

var Chat = (function () {
  var TYPING_SHOWN_MS = 3000;
  var TYPING_EVERY_MS = 1500;
  /** The close code of a connection the site closed (docs/protocol.md, Close codes). */
  var CLOSED_BY_SITE = 4001;

  function json(id) {
    var element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }

  function pad(n) { return (n < 10 ? '0' : '') + n; }

  /** "14:05" for a time in ms (the browser's time zone). */
  function clock(ms) {
    var date = new Date(ms);
    return pad(date.getHours()) + ':' + pad(date.getMinutes());
  }

  /** A chat message from a payload: the demo's JSON ({user, text, time, cid, user/group}),
   *  an event envelope of a stored history entry, or any other text (shown as it is).
   *  Null for what is not a chat line (a 'typing' event, say). */
  function decode(payload) {
    if (payload && typeof payload === 'object') return payload.text === undefined ? null : payload;
    if (typeof payload !== 'string') return {text: '(binary message)'};
    var trimmed = payload.trim();
    if (trimmed.charAt(0) === '{') {
      try {
        var obj = JSON.parse(trimmed);
        if (obj && obj.ws4tx === 'event') {
          return (obj.event === 'message' || obj.event === 'chat') ? decode(obj.data) : null;
        }
        if (obj && typeof obj.text === 'string') return obj;
      } catch (error) { /* not JSON: plain text */ }
    }
    return {text: payload};
  }

  /** Words for people, from whatever went wrong (never an exception's name or an
   *  internal address). */
  function humane(message) {
    message = String(message || '');
    if (/redis|not connected|unavailable/i.test(message)) {
      return 'the chat server cannot deliver messages right now';
    }
    if (/failed to fetch|networkerror|load failed/i.test(message)) {
      return 'the server cannot be reached';
    }
    return message;
  }

  // The connection badge

  function Badge() {
    this.element = document.getElementById('ws-state');
    this.timer = null;
  }

  Badge.prototype.set = function (state, text) {
    clearInterval(this.timer);
    this.timer = null;
    if (!this.element) return;
    this.element.dataset.state = state;
    this.element.textContent = text;
  };

  /** "reconnecting in N s · retry now", counting down to the next attempt. */
  Badge.prototype.countdown = function (delay, retry) {
    var self = this;
    var due = Date.now() + delay;
    this.set('reconnecting', '');
    var label = document.createElement('span');
    var button = document.createElement('button');
    button.type = 'button';
    button.className = 'link retry';
    button.id = 'retry-now';
    button.textContent = 'retry now';
    button.addEventListener('click', retry);
    this.element.appendChild(label);
    this.element.appendChild(document.createTextNode(' · '));
    this.element.appendChild(button);
    function tick() {
      var seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      label.textContent = 'reconnecting in ' + seconds + ' s';
    }
    tick();
    this.timer = setInterval(tick, 250);
  };

  // The message list

  function List(me) {
    this.me = me;
    this.element = document.getElementById('messages');
    this.keys = {};      // channel:epoch:offset of every line shown
  }

  /** Add a line for `message` (see decode); returns its element. */
  List.prototype.add = function (message, key) {
    if (key) this.keys[key] = true;
    var item = document.createElement('li');
    item.className = 'message';
    var time = document.createElement('time');
    time.className = 'time';
    var body = document.createElement('span');
    body.className = 'text';
    item.appendChild(time);
    item.appendChild(body);
    this.fill(item, message);
    var list = this.element;
    var atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.appendChild(item);
    if (atBottom || message.user === this.me) list.scrollTop = list.scrollHeight;
    var empty = document.getElementById('empty-chat');
    if (empty) empty.remove();
    return item;
  };

  /** Write `message` into a line: time, "who: text" ("who → whom" on the sender's own
   *  private message, "who @group" when the page has several groups). */
  List.prototype.fill = function (item, message) {
    var time = item.querySelector('.time');
    if (message.time) {
      time.textContent = clock(message.time);
      time.dateTime = new Date(message.time).toISOString();
    }
    var who = '';
    if (message.user) {
      who = message.user;
      if (message.user === this.me) {
        item.classList.add('own');
        if (typeof message.to === 'string') who += ' → ' + message.to;
      }
      if (message.group && this.groups > 1) who += ' @' + message.group;
      who += ': ';
    }
    item.querySelector('.text').textContent = who + message.text;
  };

  /** Mark an own line: 'pending' (…), 'delivered' (✓) or 'failed' (✗), with a note. */
  function mark(item, state, note) {
    item.classList.remove('pending', 'delivered', 'failed');
    item.classList.add(state);
    var tick = item.querySelector('.tick');
    if (!tick) {
      tick = document.createElement('span');
      tick.className = 'tick';
      item.appendChild(tick);
    }
    tick.textContent = {pending: '…', delivered: '✓', failed: '✗'}[state];
    tick.setAttribute('aria-label', {pending: 'not sent yet', delivered: 'delivered',
                                     failed: 'not sent'}[state]);
    var noteElement = item.querySelector('.note');
    if (note) {
      if (!noteElement) {
        noteElement = document.createElement('span');
        noteElement.className = 'note';
        item.appendChild(noteElement);
      }
      noteElement.textContent = note;
    } else if (noteElement) {
      noteElement.remove();
    }
  }

  // The page

  function start(options) {
    var config = Object.assign(json('chat-config'), options);
    config.uri = config.socket + '?' + config.flags;
    var sync = json('chat-sync') || {channels: []};
    var me = config.me || '';
    var list = new List(me);
    var badge = new Badge();
    var known = {};        // channel -> {epoch, offset}: what the page has up to
    var outbox = {};       // cid -> {text, fields, item, state}: not confirmed yet
    var lines = {};        // cid -> the line of every message this page sent
    var client = null;
    var everConnected = false;
    var asked = false;     // the current socket asked to recover
    var syncing = false;   // connected, recovery not answered yet
    var interrupted = false;  // the server lost Redis (ws4tx.interrupted): nothing goes out
    var counter = 0;
    var status = document.getElementById('send-status');
    var form = document.querySelector('form.send');
    var input = form && form.elements.message;
    var presence = config.presence ? new Presence(me) : null;
    var typing = new Typing(me);
    list.groups = (config.groups || []).length;

    function say(text, state) {
      if (!status) return;
      status.textContent = text;
      status.dataset.state = state || '';
    }

    if (sync.error) say(sync.error, 'failed');

    /** Add the messages of a sync state the page does not show yet; remember positions. */
    function merge(state) {
      var fresh = [];
      state.channels.forEach(function (channel) {
        channel.messages.forEach(function (entry) {
          var key = channel.channel + ':' + channel.epoch + ':' + entry.offset;
          var message = decode(entry.data);
          if (message && !list.keys[key]) fresh.push({message: message, key: key});
          else if (message) list.keys[key] = true;
        });
        if (channel.epoch) {
          var had = known[channel.channel];
          var offset = had && had.epoch === channel.epoch ? Math.max(had.offset, channel.offset)
                                                           : channel.offset;
          known[channel.channel] = {epoch: channel.epoch, offset: offset};
        }
      });
      // Several channels (groups): in time order; a message without time keeps its place.
      fresh.sort(function (a, b) { return (a.message.time || 0) - (b.message.time || 0); });
      fresh.forEach(function (each) { receive(each.message, each.key); });
      if (presence && state.presence) presence.reset(state.presence);
    }

    /** A message for the list: an own one settles its outbox entry, others get a line. */
    function receive(message, key) {
      if (key && list.keys[key]) return;
      var own = message.cid && lines[message.cid];
      if (own) {  // this page's own message, back from the server
        if (key) list.keys[key] = true;
        delete outbox[message.cid];
        list.fill(own, message);
        mark(own, 'delivered');
        return;
      }
      typing.stop(message.user);
      list.add(message, key);
    }

    /** The position of the message `socket` just delivered, as a key (`last` holds the
     *  socket's previous positions); null for a frame without one (the stored replay
     *  that ws4redis sends on connect). */
    function positionOf(socket, last) {
      var positions = socket.positions;
      for (var channel in positions) {
        var now = positions[channel];
        var tag = now.epoch + ':' + now.offset;
        if (last[channel] !== tag) {
          last[channel] = tag;
          var had = known[channel];
          if (!had || had.epoch !== now.epoch || had.offset < now.offset) {
            known[channel] = {epoch: now.epoch, offset: now.offset};
          }
          return channel + ':' + tag;
        }
      }
      return null;
    }

    /** The WebSocket URL with a recover= for every channel whose position is known. */
    function url() {
      var params = [];
      Object.keys(known).forEach(function (channel) {
        var at = known[channel];
        params.push('recover=' + encodeURIComponent(channel + ':' + at.epoch + ':' + at.offset));
      });
      asked = params.length > 0;
      return config.uri + (params.length ? '&' + params.join('&') : '');
    }

    function synced() {
      syncing = false;
      interrupted = false;
      if (everConnected) badge.set('connected', 'reconnected');
      else badge.set('connected', 'connected');
      everConnected = true;
      flush();
    }

    /** Fetch the page's messages (and presence) again; add what is missing. */
    function resync() {
      return fetch(location.pathname, {headers: {'Accept': 'application/json'},
                                       credentials: 'same-origin', cache: 'no-store'})
        .then(function (response) { return response.json(); })
        .then(function (state) {
          merge(state);
          if (state.error) say(state.error, 'failed');
        })
        .catch(function () { /* the next reconnect tries again */ });
    }

    function connect() {
      var socket = new WS4TX(url, {heartbeat: config.heartbeat, recover: false});
      var last = {};  // the socket's positions, as of its previous message
      client = socket;
      function mine(fn) {
        return function (data) { if (socket === client) fn(data); };
      }
      socket.on('connecting', mine(function (info) {
        if (everConnected || info.attempt > 0) badge.set('reconnecting', 'reconnecting…');
        else badge.set('connecting', 'connecting');
      }));
      socket.on('connected', mine(function () {
        syncing = asked;
        if (!syncing) synced();
        if (presence) {
          presence.restart();
          resync();
        }
      }));
      socket.on('recovered', mine(function (result) {
        if (result && result.recovered) {
          synced();
        } else {
          resync().then(function () { if (socket === client) synced(); });
        }
      }));
      socket.on('reconnecting', mine(function (info) {
        badge.countdown(info.delay, retryNow);
      }));
      socket.on('disconnected', mine(function (info) {
        syncing = false;
        interrupted = false;
        if (info.code === CLOSED_BY_SITE) {
          // A logout (here or in another tab), a password change...: who this page is
          // for changed, and the page shows it anew.
          client = null;
          socket.close();
          badge.set('disconnected', (info.reason || 'closed by the site') + ': reloading');
          location.reload();
        } else if (!info.reconnect) {
          badge.set('disconnected', 'disconnected: reload the page');
        }
      }));
      socket.on('ws4tx.interrupted', mine(function () {
        interrupted = true;
        badge.set('interrupted', 'connected · messages delayed: the server lost its message store');
      }));
      socket.on('ws4tx.resumed', mine(function () {
        resync().then(function () { if (socket === client) synced(); });
      }));
      socket.on('ws4tx.dropped', mine(function () { resync(); }));
      socket.on('ws4tx.error', mine(function (data) {
        say('not sent: ' + humane(data && data.message), 'failed');
      }));
      function incoming(data) {
        var key = positionOf(socket, last);
        if (!key && syncing) return;  // the replay: recovery or the resync covers it
        var message = decode(data);
        if (message) receive(message, key);
      }
      socket.on('message', mine(incoming));
      socket.on('chat', mine(incoming));
      socket.on('typing', mine(function (data) {
        positionOf(socket, last);
        if (!syncing && data && data.user) typing.show(data.user);
      }));
      if (presence) {
        socket.on('ws4tx.presence', mine(function (data) { presence.update(data); }));
      }
    }

    /** Give up waiting for the backoff: a new socket now, from the same positions. */
    function retryNow() {
      var old = client;
      client = null;
      if (old) old.close();
      connect();
    }

    // Sending

    function newCid() {
      return 'c' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6) + (++counter);
    }

    function connected() {
      return client !== null && client.state === 'connected' && !syncing && !interrupted;
    }

    var UNDELIVERABLE = 'the chat server cannot deliver messages right now';

    /** Try to send every queued message (after a (re)connect, or when Redis is back). */
    function flush() {
      Object.keys(outbox).forEach(function (cid) {
        var entry = outbox[cid];
        if (entry.state === 'queued' || entry.state === 'unsure') send(cid);
      });
    }

    var retryTimer = null;

    function queued(cid, why) {
      var entry = outbox[cid];
      if (!entry) return;
      entry.state = 'queued';
      mark(entry.item, 'pending', 'not sent yet: ' + why + '; it is sent when the connection is back');
      // Connected, yet refused for now (Redis just came back, say): try again soon; else
      // the next (re)connect sends it.
      if (connected() && retryTimer === null) {
        retryTimer = setTimeout(function () { retryTimer = null; flush(); }, 2000);
      }
    }

    function failed(cid, why) {
      var entry = outbox[cid];
      if (!entry) return;
      delete outbox[cid];
      mark(entry.item, 'failed', 'not sent: ' + why);
      say('not sent: ' + why, 'failed');
    }

    var senders = {
      /** /chat/: the message goes over the WebSocket (publish-broadcast&echo); its echo
       *  confirms it. */
      socket: function (cid, entry) {
        if (interrupted) return queued(cid, UNDELIVERABLE);
        if (!connected()) return queued(cid, 'you are offline');
        var frame = JSON.stringify({user: me, text: entry.text, time: Date.now(), cid: cid});
        if (!client.send(frame)) return queued(cid, 'you are offline');
        entry.state = 'unsure';  // sent; a reconnect before its echo sends it again
      },
      /** /userchat/, /groupchat/: a form POST that Django publishes; the page's own
       *  channel brings the message back (always for a user chat, for a group chat when
       *  the person is in the group). */
      post: function (cid, entry) {
        if (interrupted) return queued(cid, UNDELIVERABLE);
        var body = new FormData();
        Object.keys(entry.fields).forEach(function (k) { body.append(k, entry.fields[k]); });
        body.append('cid', cid);
        entry.state = 'sending';
        fetch(form.action, {method: 'POST', body: body, credentials: 'same-origin',
                            headers: {'Accept': 'application/json'}})
          .then(function (response) {
            return response.json().catch(function () { return null; }).then(function (answer) {
              posted(cid, entry, response, answer);
            });
          }, function () {
            queued(cid, 'the server cannot be reached');
          });
      },
      /** /eventchat/: an event the server-side handler acknowledges. */
      event: function (cid, entry) {
        if (interrupted) return queued(cid, UNDELIVERABLE);
        if (!connected()) return queued(cid, 'you are offline');
        entry.state = 'sending';
        client.request('message', {text: entry.text, cid: cid}).then(function (answer) {
          var sent = outbox[cid];
          if (sent && answer && answer.delivered) {
            delete outbox[cid];
            mark(sent.item, 'delivered');
          }
        }, function (error) {
          if (error.code === 'not-connected') return queued(cid, 'you are offline');
          // Sent, then the connection dropped: recovery brings it back if it was
          // delivered, else it is sent again.
          if (error.code === 'disconnected') { entry.state = 'unsure'; return; }
          if (error.code === 'timeout') return queued(cid, 'the server did not answer');
          if (humane(error.message) === UNDELIVERABLE) return queued(cid, UNDELIVERABLE);
          failed(cid, humane(error.message));
        });
      }
    };

    function posted(cid, entry, response, answer) {
      var target = answer && (answer.user || answer.group);
      if (response.ok && answer && answer.sent) {
        // Published: the copy that comes back (to the sender's user channel, or to a
        // group the sender is in) only fills in its position and time.
        say('sent to ' + target, 'sent');
        delete outbox[cid];
        var mineToo = entry.fields.user !== undefined || config.groups.indexOf(target) >= 0;
        mark(entry.item, 'delivered', mineToo ? '' : 'to ' + target + ' (you are not in it)');
        return;
      }
      if (response.status === 503) {
        var why = answer && (answer.error || answer.message);
        return queued(cid, why ? humane(why) : UNDELIVERABLE);
      }
      if (response.status === 400 && answer && answer.errors) {
        var reasons = [];
        Object.keys(answer.errors).forEach(function (field) {
          answer.errors[field].forEach(function (e) { reasons.push(e.message); });
        });
        return failed(cid, reasons.join(' ') || 'the message was refused');
      }
      if (response.status === 403) {
        return failed(cid, 'this page is out of date; reload it and send again');
      }
      if (response.redirected || (response.ok && !answer)) {
        return failed(cid, 'you are logged out; log in and send again');
      }
      failed(cid, 'the server had a problem (error ' + response.status + '); try again');
    }

    function send(cid) {
      var entry = outbox[cid];
      if (entry) senders[config.mode](cid, entry);
    }

    if (form && input && !input.disabled) {
      form.addEventListener('submit', function (event) {
        event.preventDefault();
        var text = input.value.trim();
        if (!text) return;
        var fields = {};
        new FormData(form).forEach(function (value, name) { fields[name] = value; });
        var cid = newCid();
        var message = {user: me, text: text, time: Date.now()};
        if (fields.user) message.to = fields.user;
        var item = list.add(message, null);
        outbox[cid] = {text: text, fields: fields, item: item, state: 'queued'};
        lines[cid] = item;
        mark(item, 'pending');
        input.value = '';
        typing.sent();
        say('', '');
        send(cid);
      });
      if (config.mode === 'event') {
        input.addEventListener('input', function () {
          if (input.value && typing.due() && connected()) client.emit('typing');
        });
      }
    }

    // Leaving the page with messages not sent yet would lose them: the browser asks first.
    window.addEventListener('beforeunload', function (event) {
      if (Object.keys(outbox).length) event.preventDefault();
    });

    merge(sync);
    if (config.connect) {
      connect();
    } else {
      badge.set('off', 'not connected');
    }
    return {
      get client() { return client; },
      retryNow: retryNow,
      known: known
    };
  }

  // Who is typing (the event chat)

  function Typing(me) {
    this.me = me;
    this.typists = {};
    this.last = 0;
  }

  Typing.prototype.render = function () {
    var element = document.getElementById('typing');
    if (!element) return;
    var names = Object.keys(this.typists);
    element.textContent = names.length === 0 ? '' :
      names.join(', ') + (names.length === 1 ? ' is' : ' are') + ' typing…';
  };

  Typing.prototype.show = function (user) {
    if (!user || user === this.me) return;
    var self = this;
    clearTimeout(this.typists[user]);
    this.typists[user] = setTimeout(function () { self.stop(user); }, TYPING_SHOWN_MS);
    this.render();
  };

  Typing.prototype.stop = function (user) {
    if (user && this.typists[user]) {
      clearTimeout(this.typists[user]);
      delete this.typists[user];
      this.render();
    }
  };

  /** Whether to tell the others again that this person is typing. */
  Typing.prototype.due = function () {
    var now = Date.now();
    if (now - this.last <= TYPING_EVERY_MS) return false;
    this.last = now;
    return true;
  };

  Typing.prototype.sent = function () { this.last = 0; };

  // Who is online (the event chat: ws4tx.presence events over api.presence on load)

  function Presence(me) {
    this.me = me;
    this.listed = {};    // connection id -> user (null: anonymous), from the last list
    this.joined = {};    // the same, from this connection's ws4tx.presence events
    this.gone = {};      // ids announced as gone (a late list must not bring them back)
  }

  /** A new connection: its events start anew (what was missed comes with the list). */
  Presence.prototype.restart = function () { this.joined = {}; };

  /** The list read from api.presence (on load, after each connect). */
  Presence.prototype.reset = function (entries) {
    var self = this;
    this.listed = {};
    entries.forEach(function (e) { self.listed[e.id] = e.user; });
    this.render();
  };

  Presence.prototype.update = function (data) {
    var self = this;
    (data.joined || []).forEach(function (e) { self.joined[e.id] = e.user; });
    (data.left || []).forEach(function (id) { self.gone[id] = true; });
    this.render();
  };

  Presence.prototype.render = function () {
    var element = document.getElementById('online');
    if (!element) return;
    var tabs = {};
    var anonymous = 0;
    var self = this;
    var entries = Object.assign({}, this.listed, this.joined);
    Object.keys(entries).forEach(function (id) {
      if (self.gone[id]) return;
      var user = entries[id];
      if (user) tabs[user] = (tabs[user] || 0) + 1;
      else anonymous++;
    });
    var names = Object.keys(tabs).sort().map(function (user) {
      return (user === self.me ? user + ' (you)' : user) +
        (tabs[user] > 1 ? ' ×' + tabs[user] : '');
    });
    if (anonymous) names.push(anonymous + (anonymous === 1 ? ' visitor' : ' visitors') + ' not logged in');
    element.textContent = names.length ? 'Online: ' + names.join(', ') : 'Nobody else is online';
    element.dataset.users = Object.keys(tabs).sort().join(',');
  };

  return {start: start, decode: decode, humane: humane, clock: clock};
})();
