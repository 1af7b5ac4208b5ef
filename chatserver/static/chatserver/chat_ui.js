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

  return {json: json, clock: clock, decode: decode, humane: humane, mark: mark,
          Badge: Badge, List: List, Typing: Typing, Presence: Presence};
})();
