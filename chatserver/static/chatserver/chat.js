/* The demo's chat pages: one script for the broadcast, user, group and event chats (after
 * ws4tx.js and chat_ui.js).
 *
 * Chat.start() reads the page's #chat-config (what the page is) and #chat-sync (its
 * channels' recent messages and positions, rendered by chatserver.views), shows the
 * messages, and connects ws4tx.js (WS4TX) to the bare WebSocket URL (/ws/): ONE
 * connection, which subscribes the page's facility (config.facility, config.audiences,
 * with the grant of #chat-grants) from those positions: every message published since the
 * page was rendered arrives once, and after any reconnect exactly what the page missed
 * (docs/protocol.md, Recovery). When the server cannot (`recovered: false`), ws4tx.js
 * calls the subscription's `getState`, which fetches the page's messages again and adds
 * those it lacks, and holds live messages until it is done. The page's events (messages,
 * typing) go to that subscription's facility's handler; who is online comes with it.
 *
 * The same connection carries the notification badge of every page (a subscription to
 * the user's own channel of the chat facility, config.notify, with its own grant): a
 * private message to the person while they read another page counts on the "User chat"
 * link.
 *
 * Lines are ordered by their position in their channel, then by time; every stored or live
 * message is checked field by field (chat_ui.js's decode) and handled alone, so that no
 * message can break the page, and a line names a user only when the server vouches for it.
 * What the page says of a condition (messages not loaded, a message not sent) goes when the
 * condition does.
 *
 * What the person sends goes through an outbox: a line shows at once (own style, "…"),
 * becomes "✓" when the server confirms it (the message comes back under the person's name
 * with its `cid`), and waits while the page is disconnected, to be sent when it is back; a
 * message the server refuses is marked "✗" with the reason in words. The outbox belongs
 * to the user who wrote it: each message goes with `as` (that user), and the server refuses
 * it when the browser is logged in as somebody else by then (another tab logged in): it is
 * marked not sent, saying why, never sent under the other name. What the page shows is
 * chat_ui.js's. */
'use strict';

var Chat = (function () {
  /** The close code of a connection the site closed (docs/protocol.md, Close codes). */
  var CLOSED_BY_SITE = 4001;
  var json = ChatUI.json, decode = ChatUI.decode, humane = ChatUI.humane, mark = ChatUI.mark;

  function start(options) {
    var config = Object.assign(json('chat-config'), options);
    var grants = document.getElementById('chat-grants');
    grants = grants ? grants.dataset : {};
    var sync = json('chat-sync') || {channels: []};
    var me = config.me || '';
    var list = new ChatUI.List(me);
    var badge = new ChatUI.Badge();
    var known = Object.create(null);   // channel -> {epoch, offset}: what the page has
    var outbox = Object.create(null);  // cid -> {text, fields, as, item, state}: not
                                       // confirmed yet
    var lines = Object.create(null);   // cid -> the line of every message this page sent
    var loaded = true;     // the page's messages could be read (else it reads them again)
    var client = null;
    var page = null;       // the subscription of the page's facility, on client
    var notes = null;      // the notification subscription (config.notify)
    var unread = 0;
    var everConnected = false;
    var syncing = false;   // connected, recovery not answered yet
    var interrupted = false;  // the server lost Redis (ws4tx.interrupted): nothing goes out
    var counter = 0;
    var status = document.getElementById('send-status');
    var form = document.querySelector('form.send');
    var input = form && form.elements.message;
    var presence = config.presence ? new ChatUI.Presence(me) : null;
    var typing = new ChatUI.Typing(me);
    list.groups = (config.groups || []).length;

    /** What the status line says, and why (`cause`: 'store', 'cid:<cid>', 'server'), so
     *  that it goes when its cause does (see unsay). */
    var said = '';
    function say(text, state, cause) {
      if (!status) return;
      status.textContent = text;
      status.dataset.state = state || '';
      said = cause || '';
    }

    /** The condition `cause` is over: what the status line says of it goes. */
    function unsay(cause) {
      if (said && said === cause) say('', '');
    }

    /** Run `fn` on one message; a message that breaks it is left out, never the page. */
    function safely(fn) {
      try {
        fn();
      } catch (error) {
        if (window.console) console.warn('a message left out:', error);
      }
    }

    function position(channel, epoch, offset) {
      return {key: channel + ':' + epoch + ':' + offset, channel: channel, epoch: epoch,
              offset: offset};
    }

    /** An entry of a page's JSON: its message, or a note of its size when it was too long
     *  to carry (chatserver._recent). */
    function entryMessage(entry) {
      if (typeof entry.omitted === 'number') {
        return {text: '(a message of ' + Math.ceil(entry.omitted / 1024) +
                      ' KB, too long to show here)'};
      }
      return decode(entry.data, config.trustRaw);
    }

    /** Add the messages of a sync state the page does not show yet (each where its
     *  position and time say); remember positions; say whether they could be read. */
    function merge(state) {
      (state.channels || []).forEach(function (channel) {
        (channel.messages || []).forEach(function (entry) {
          safely(function () {
            if (!Number.isInteger(entry.offset)) return;
            var at = position(channel.channel, channel.epoch, entry.offset);
            var message = entryMessage(entry);
            if (message) receive(message, at);
            else list.keys[at.key] = true;
          });
        });
        if (channel.epoch && Number.isInteger(channel.offset)) {
          var had = known[channel.channel];
          var offset = had && had.epoch === channel.epoch ? Math.max(had.offset, channel.offset)
                                                           : channel.offset;
          known[channel.channel] = {epoch: channel.epoch, offset: offset};
        }
      });
      loaded = !state.error;
      list.emptyText(loaded);
      if (state.error) say(state.error, 'failed', 'store');
      else unsay('store');
      if (presence && Array.isArray(state.presence)) presence.reset(state.presence);
    }

    /** A message for the list: an own one settles its outbox entry (only a message the
     *  server gives under this person's name: another user's with the same cid is theirs),
     *  others get a line. */
    function receive(message, at) {
      if (at && list.keys[at.key]) return;
      var own = message.named && message.user === me && message.cid &&
                lines[message.cid];
      if (own) {  // this page's own message, back from the server
        if (at) list.keys[at.key] = true;
        delete outbox[message.cid];
        list.fill(own, message, at);
        list.place(own);
        mark(own, 'delivered');
        unsay('cid:' + message.cid);
        unsay('server');
        return;
      }
      if (message.named) typing.stop(message.user);
      list.add(message, at);
    }

    /** The position of the message `socket` just delivered (`last` holds the socket's
     *  previous positions); null for a frame without one (the stored replay that ws4redis
     *  sends on connect). */
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
          return position(channel, now.epoch, now.offset);
        }
      }
      return null;
    }

    function synced() {
      syncing = false;
      interrupted = false;
      if (everConnected) badge.set('connected', 'reconnected');
      else badge.set('connected', 'connected');
      everConnected = true;
      flush();
    }

    /** Fetch the page's messages (and presence) again; add what is missing. Resolves with
     *  where the fetched messages stand ({positions}), for ws4tx.js. */
    function resync() {
      return fetch(location.pathname, {headers: {'Accept': 'application/json'},
                                       credentials: 'same-origin', cache: 'no-store'})
        .then(function (response) { return response.json(); })
        .then(function (state) {
          merge(state);
          var positions = {};
          (state.channels || []).forEach(function (channel) {
            if (channel.epoch && Number.isInteger(channel.offset)) {
              positions[channel.channel] = {epoch: channel.epoch, offset: channel.offset};
            }
          });
          return {positions: positions};
        })
        .catch(function () { /* the next reconnect tries again */ });
    }

    /** The "User chat" link counts the private messages to the person that came while
     *  this page was open. */
    function notified(data) {
      safely(function () {
        var message = decode(data, config.notify.trustRaw);
        if (!message || (message.named && message.user === me)) return;
        var count = document.getElementById('notify-count');
        if (!count) return;
        unread++;
        count.textContent = String(unread);
        count.hidden = false;
        count.setAttribute('aria-label', unread + ' new private message' + (unread > 1 ? 's' : ''));
      });
    }

    function connect() {
      var socket = new WS4TX(config.socket, {heartbeat: config.heartbeat});
      // The page's positions (what it shows): the first connect recovers from them, a
      // later one (retry now) from what it has got since.
      var sub = socket.subscribe(config.facility, {
        audiences: config.audiences, grant: grants.page || null, positions: known,
        getState: function () {
          return resync().then(function (state) {
            if (socket === client) synced();
            return state;
          });
        }});
      var last = {};  // the subscription's positions, as of its previous message
      Object.keys(known).forEach(function (channel) {
        last[channel] = known[channel].epoch + ':' + known[channel].offset;
      });
      client = socket;
      page = sub;
      if (config.notify) {
        var from = notes ? notes.positions : config.notify.positions;
        notes = socket.subscribe(config.notify.facility, {audiences: ['user'], positions: from,
                                                          grant: grants.notify || null,
                                                          getState: function () {}});
        notes.on('message', mine(notified));
      }
      function mine(fn) {
        return function (data) { if (socket === client) fn(data); };
      }
      socket.on('connecting', mine(function (info) {
        if (everConnected || info.attempt > 0) badge.set('reconnecting', 'reconnecting…');
        else badge.set('connecting', 'connecting');
      }));
      // The page's channels are subscribed (on every connect): ws4tx.js asks to recover
      // whenever it knows positions, and a verdict follows.
      sub.on('subscribed', mine(function () {
        syncing = Object.keys(sub.positions).length > 0;
        if (!syncing) synced();
        if (presence) presence.restart();
        // Presence is read anew on every connect; messages that could not be loaded are
        // read now that the server is back.
        if (presence || !loaded) resync();
      }));
      // Not recovered: ws4tx.js calls getState (above), which says synced when done.
      sub.on('recovered', mine(function (result) {
        if (result && result.recovered) synced();
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
      // Redis is back: the node recovers the channels itself (a 'recovered' false, and
      // getState, when it cannot); who is online is read anew, as on a connect.
      socket.on('ws4tx.resumed', mine(function () {
        synced();
        if (presence) resync();
      }));
      socket.on('ws4tx.dropped', mine(function () { resync(); }));
      sub.on('refused', mine(function (data) {
        badge.set('disconnected', 'refused: ' + humane(data && data.reason) +
                  ': reload the page');
      }));
      sub.on('ws4tx.error', mine(function (data) {
        say('not sent: ' + humane(data && data.message), 'failed', 'server');
      }));
      function incoming(data) {
        var at = positionOf(sub, last);
        // The replay: recovery or the resync covers it (a page that could not load its
        // messages reads them again, where they have their position).
        if (!at && (syncing || !loaded)) return;
        safely(function () {
          var message = decode(data, config.trustRaw);
          if (message) receive(message, at);
        });
      }
      sub.on('message', mine(incoming));
      sub.on('chat', mine(incoming));
      sub.on('typing', mine(function (data) {
        positionOf(sub, last);
        if (!syncing && data && typeof data.user === 'string') typing.show(data.user);
      }));
      if (presence) {
        sub.on('ws4tx.presence', mine(function (data) { presence.update(data); }));
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
      return client !== null && client.state === 'connected' && page.state === 'subscribed'
        && !syncing && !interrupted;
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
      say('not sent: ' + why, 'failed', 'cid:' + cid);
    }

    var senders = {
      /** /userchat/, /groupchat/: a form POST that Django publishes; the page's own
       *  channel brings the message back (always for a user chat, for a group chat when
       *  the person is in the group). */
      post: function (cid, entry) {
        if (interrupted) return queued(cid, UNDELIVERABLE);
        var body = new FormData();
        Object.keys(entry.fields).forEach(function (k) { body.append(k, entry.fields[k]); });
        body.append('cid', cid);
        body.append('as', entry.as);
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
      /** /chat/, /eventchat/: an event the server-side handler acknowledges. */
      event: function (cid, entry) {
        if (interrupted) return queued(cid, UNDELIVERABLE);
        if (!connected()) return queued(cid, 'you are offline');
        entry.state = 'sending';
        page.request('message', {text: entry.text, cid: cid, as: entry.as})
          .then(function (answer) {
          var sent = outbox[cid];
          if (sent && answer && answer.delivered) {
            delete outbox[cid];
            mark(sent.item, 'delivered');
            unsay('cid:' + cid);
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
        // A confirmation, not a condition: the copy coming back does not take it away
        // (a message to yourself comes back at once).
        say('sent to ' + target, 'sent');
        delete outbox[cid];
        var mineToo = entry.fields.user !== undefined || config.groups.indexOf(target) >= 0;
        mark(entry.item, 'delivered', mineToo ? '' : 'to ' + target + ' (you are not in it)');
        return;
      }
      if (response.status === 503) {  // Redis could not take it: nobody got it
        return queued(cid, UNDELIVERABLE);
      }
      if (response.status === 409 && answer && typeof answer.error === 'string') {
        return failed(cid, answer.error);  // written as somebody this browser no longer is
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
        var message = {user: me, text: text, time: Date.now(), named: true};
        if (fields.user) message.to = fields.user;
        var item = list.add(message, null);
        outbox[cid] = {text: text, fields: fields, as: me, item: item, state: 'queued'};
        lines[cid] = item;
        mark(item, 'pending');
        input.value = '';
        typing.sent();
        say('', '');
        send(cid);
      });
      if (config.typing) {
        input.addEventListener('input', function () {
          if (input.value && typing.due() && connected()) page.emit('typing');
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
      get page() { return page; },
      retryNow: retryNow,
      known: known
    };
  }

  return {start: start};
})();
