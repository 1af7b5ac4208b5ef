/* The demo chat's presentation (chat.js does the connecting and sending): the connection
 * badge, the message list (a line per message: time, who, text; own lines styled and
 * marked …, ✓ or ✗), who is typing and who is online. Plain DOM, no framework; every
 * message is inserted as text, never as HTML. */
'use strict';

var ChatUI = (function () {
  var TYPING_SHOWN_MS = 3000;
  var TYPING_EVERY_MS = 1500;

  /** The JSON of a json_script element; null without one. */
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

  /** A time (Unix ms) a Date can show, or undefined. */
  function validTime(value) {
    return typeof value === 'number' && isFinite(value) && value > 0 && value < 8.64e15
      ? value : undefined;
  }

  function shortString(value, max) {
    return typeof value === 'string' && value.length > 0 && value.length <= max ? value : undefined;
  }

  /** The fields of a chat message that the page uses, each checked (a field of the wrong
   *  kind is left out; a message is never trusted to be well formed): `text`, `time`, and,
   *  when `named` (the server vouches for them), `user`, `cid`, `to`, `group`. */
  function message(fields, named) {
    var result = {text: fields.text, named: named};
    var time = validTime(fields.time);
    if (time !== undefined) result.time = time;
    if (named) {
      ['user', 'to', 'group'].forEach(function (name) {
        var value = shortString(fields[name], 150);
        if (value !== undefined) result[name] = value;
      });
      if (typeof fields.cid === 'string' && /^c[0-9a-z]{1,63}$/.test(fields.cid)) {
        result.cid = fields.cid;
      }
    }
    return result;
  }

  /** A chat message from a payload: an event's data (from the server: named), an event
   *  envelope of a stored history entry, the demo's JSON ({user, text, time, cid, to,
   *  group}), or any other text (shown as it is). `trustRaw`: whether a raw payload's
   *  `user` is believed (only where no client may publish: Django wrote it). A raw JSON
   *  message where clients publish is shown as it is: it could name anybody. Null for what
   *  is not a chat line (a 'typing' event, say). */
  function decode(payload, trustRaw) {
    if (payload && typeof payload === 'object') {
      return typeof payload.text === 'string' ? message(payload, true) : null;
    }
    if (typeof payload !== 'string') return {text: '(binary message)'};
    var trimmed = payload.trim();
    if (trimmed.charAt(0) === '{') {
      var obj = null;
      try {
        obj = JSON.parse(trimmed);
      } catch (error) { /* not JSON: plain text */ }
      // An event envelope only as the server reads one: "ws4tx" its first key (a raw
      // message that merely has a "ws4tx" member is shown as it is).
      if (obj && typeof obj === 'object' && obj.ws4tx === 'event'
          && /^\{\s*"ws4tx"\s*:/.test(trimmed)) {
        return (obj.event === 'message' || obj.event === 'chat') ? decode(obj.data, trustRaw)
                                                                   : null;
      }
      if (trustRaw && obj && typeof obj.text === 'string') return message(obj, true);
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
    this.keys = Object.create(null);  // channel:epoch:offset of every line shown
  }

  /** Whether line `b` must show below line `a` (each an element's `chatOrder`): by
   *  position in the same channel, else by time; lines that cannot be compared (no time)
   *  keep the order they came in. */
  function below(b, a) {
    if (a.channel && a.channel === b.channel && a.epoch === b.epoch) return b.offset > a.offset;
    if (a.time !== undefined && b.time !== undefined) return b.time > a.time;
    return false;
  }

  /** Put `item` where its position and time say, among the lines shown. */
  List.prototype.place = function (item) {
    var list = this.element;
    var atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    var next = null;
    for (var other = list.firstElementChild; other; other = other.nextElementSibling) {
      if (other !== item && other.chatOrder && below(other.chatOrder, item.chatOrder)) {
        next = other;
        break;
      }
    }
    if (next) list.insertBefore(item, next);
    else list.appendChild(item);
    return atBottom;
  };

  /** Add a line for `message` (see decode) at `position` ({key, channel, epoch, offset};
   *  null for a line of this page's own not confirmed yet); returns its element. */
  List.prototype.add = function (message, position) {
    if (position) this.keys[position.key] = true;
    var item = document.createElement('li');
    item.className = 'message';
    var time = document.createElement('time');
    time.className = 'time';
    var body = document.createElement('span');
    body.className = 'text';
    item.appendChild(time);
    item.appendChild(body);
    this.fill(item, message, position);
    var atBottom = this.place(item);
    var list = this.element;
    if (atBottom || (message.named && message.user === this.me)) {
      list.scrollTop = list.scrollHeight;
    }
    return item;
  };

  /** Write `message` into a line: time, "who: text" ("who → whom" on the sender's own
   *  private message, "who @group" when the page has several groups); remember its
   *  position and time, by which it is ordered. */
  List.prototype.fill = function (item, message, position) {
    var order = item.chatOrder || {};
    if (position) {
      order.channel = position.channel;
      order.epoch = position.epoch;
      order.offset = position.offset;
    }
    var time = item.querySelector('.time');
    if (message.time !== undefined) {
      order.time = message.time;
      time.textContent = clock(message.time);
      time.dateTime = new Date(message.time).toISOString();
    }
    item.chatOrder = order;
    var who = '';
    if (message.named && message.user) {
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

  /** What the empty list says (nothing while the messages could not be loaded: "No
   *  messages yet" would not be true). */
  List.prototype.emptyText = function (loaded) {
    if (this.emptyDefault === undefined) this.emptyDefault = this.element.dataset.empty || '';
    this.element.dataset.empty = loaded ? this.emptyDefault : '';
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

  // Who is typing (the event chat)

  function Typing(me) {
    this.me = me;
    this.typists = Object.create(null);
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
    this.listed = Object.create(null);  // connection id -> user (null: anonymous), last list
    this.joined = Object.create(null);  // the same, from this connection's ws4tx.presence
    this.gone = Object.create(null);    // ids announced as gone (a late list must not
                                        // bring them back)
  }

  /** A new connection: its events start anew (what was missed comes with the list). */
  Presence.prototype.restart = function () { this.joined = Object.create(null); };

  /** The list read from api.presence (on load, after each connect). */
  Presence.prototype.reset = function (entries) {
    var self = this;
    this.listed = Object.create(null);
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
    var tabs = Object.create(null);
    var anonymous = 0;
    var self = this;
    var entries = Object.assign(Object.create(null), this.listed, this.joined);
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

  return {json: json, clock: clock, decode: decode, humane: humane, mark: mark,
          Badge: Badge, List: List, Typing: Typing, Presence: Presence};
})();
