/* The event chat: ws4tx.js's event API only (no form POST).
 *
 * request('message', {text, cid}) is answered by chatserver.handlers.EventChat with
 * {delivered: true} (a tick on the sender's line) or an error (shown in #send-error);
 * the handler broadcasts the event 'message' {user, text, cid} to everybody, and
 * emit('typing') as 'typing' {user}. */
'use strict';

var EventChat = (function () {
  var TYPING_SHOWN_MS = 3000;
  var TYPING_EVERY_MS = 1500;

  function start(uri) {
    var me = JSON.parse(document.getElementById('chat-user').textContent) || null;
    var client = new WS4TX(uri);
    var mine = {};          // cid -> the line of a message this page sent
    var typists = {};       // user -> timer that hides "is typing"
    var lastTyping = 0;
    var counter = 0;
    var error = document.getElementById('send-error');
    var form = document.getElementById('event-form');
    var input = form.elements.message;

    ['connecting', 'connected', 'disconnected', 'reconnecting'].forEach(function (state) {
      client.on(state, function () { Chat.setState(state); });
    });

    function showTyping() {
      var names = Object.keys(typists);
      var element = document.getElementById('typing');
      element.textContent = names.length === 0 ? '' :
        names.join(', ') + (names.length === 1 ? ' is' : ' are') + ' typing…';
    }

    function stopTyping(user) {
      if (typists[user]) {
        clearTimeout(typists[user]);
        delete typists[user];
        showTyping();
      }
    }

    client.on('message', function (data) {
      // Raw frames fire 'message' too; this facility only carries the handler's events.
      if (!data || typeof data !== 'object' || typeof data.text !== 'string') return;
      stopTyping(data.user);
      if (data.user === me && data.cid && mine[data.cid]) return;  // already shown
      Chat.addMessage(data.user + ': ' + data.text);
    });

    client.on('typing', function (data) {
      if (!data || !data.user || data.user === me) return;
      clearTimeout(typists[data.user]);
      typists[data.user] = setTimeout(function () { stopTyping(data.user); }, TYPING_SHOWN_MS);
      showTyping();
    });

    client.on('ws4tx.error', function (data) {
      error.textContent = (data && data.message) || 'error';
    });

    input.addEventListener('input', function () {
      var now = Date.now();
      if (me && input.value && now - lastTyping > TYPING_EVERY_MS) {
        lastTyping = now;
        client.emit('typing');
      }
    });

    Chat.onSubmit('event-form', function () {
      var text = input.value.trim();
      if (!text) return;
      var cid = 'c' + Date.now().toString(36) + '-' + (++counter);
      var line = Chat.addMessage((me || 'anonymous') + ': ' + text, 'pending');
      var tick = document.createElement('span');
      tick.className = 'tick';
      tick.setAttribute('aria-label', 'sending');
      tick.textContent = '…';
      line.appendChild(tick);
      mine[cid] = line;
      error.textContent = '';
      input.value = '';
      lastTyping = 0;
      client.request('message', {text: text, cid: cid}).then(function (answer) {
        if (answer && answer.delivered) {
          line.classList.remove('pending');
          line.classList.add('delivered');
          tick.textContent = '✓';
          tick.setAttribute('aria-label', 'delivered');
        }
      }, function (reason) {
        line.classList.remove('pending');
        line.classList.add('failed');
        tick.textContent = '✗';
        tick.setAttribute('aria-label', 'not delivered');
        error.textContent = (reason && reason.message) || String(reason);
      });
    });

    return client;
  }

  return {start: start};
})();
