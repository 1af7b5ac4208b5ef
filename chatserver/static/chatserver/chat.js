/* The demo's page helpers: connection state, the message list, and the forms.
 * Plain DOM, no framework; messages are inserted as text, never as HTML. */
'use strict';

var Chat = (function () {
  /** Show the connection state (connecting, connected, disconnected, reconnecting). */
  function setState(state) {
    var element = document.getElementById('ws-state');
    if (!element) return;
    element.textContent = state;
    element.dataset.state = state;
  }

  /** Callbacks for ws4redis.js's options (connecting, connected, disconnected): a
   * connection attempt after the first one shows as "reconnecting". */
  function connectionState() {
    var everConnected = false;
    return {
      connecting: function () { setState(everConnected ? 'reconnecting' : 'connecting'); },
      connected: function () { everConnected = true; setState('connected'); },
      disconnected: function () { setState('disconnected'); }
    };
  }

  /** Append a line to the message list; returns its element. */
  function addMessage(text, className) {
    var list = document.getElementById('messages');
    var item = document.createElement('li');
    item.className = 'message' + (className ? ' ' + className : '');
    var body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    item.appendChild(body);
    list.appendChild(item);
    list.scrollTop = list.scrollHeight;
    return item;
  }

  /** ws4redis's receive_message callback: every raw message is one line. */
  function receiveMessage(message) {
    addMessage(String(message));
  }

  /** Run handler(form) on submit instead of the browser's own submission. */
  function onSubmit(formId, handler) {
    var form = document.getElementById(formId);
    if (!form) return;
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      handler(form);
    });
  }

  /** POST a form (with its csrfmiddlewaretoken field) with fetch and show the outcome in
   * #send-status, so that the page and its WebSocket stay. Without JavaScript the form
   * posts normally. */
  function postWithFetch(formId) {
    onSubmit(formId, function (form) {
      var status = document.getElementById('send-status');
      var input = form.elements.message;
      status.textContent = 'sending…';
      status.dataset.state = 'sending';
      fetch(form.action, {
        method: 'POST',
        body: new FormData(form),
        headers: {'Accept': 'application/json'},
        credentials: 'same-origin'
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (response.ok && body.sent) {
            var target = body.user || body.group;
            status.textContent = 'sent to ' + target;
            status.dataset.state = 'sent';
            input.value = '';
          } else {
            status.textContent = 'not sent (' + response.status + ')';
            status.dataset.state = 'failed';
          }
        });
      }).catch(function (error) {
        status.textContent = 'not sent: ' + error;
        status.dataset.state = 'failed';
      });
    });
  }

  return {
    setState: setState,
    connectionState: connectionState,
    addMessage: addMessage,
    receiveMessage: receiveMessage,
    onSubmit: onSubmit,
    postWithFetch: postWithFetch
  };
})();
