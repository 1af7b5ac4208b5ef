/*!
 * ws4tx.js: the browser client of ws4tx (a WebSocket push server for Django sites).
 * One plain script, no dependencies. Wire protocol: docs/protocol.md.
 *
 * Event API (subprotocol "ws4tx.v1", JSON envelopes):
 *
 *   const client = new WS4TX('wss://example.com/ws/chat?subscribe-broadcast', {
 *     heartbeat: null,          // string sent every heartbeatInterval and echoed by the server
 *     heartbeatInterval: 5000,  // ms
 *     maxMissedHeartbeats: 3,   // unanswered heartbeats before the socket is dropped
 *     reconnect: true,          // reconnect after a drop (full-jitter exponential backoff)
 *     minDelay: 500,            // ms, cap of the first retry's delay
 *     maxDelay: 30000,          // ms, largest cap
 *     ackTimeout: 10000,        // ms an acknowledgement may take (0 or null: no limit)
 *     protocols: [],            // extra subprotocols, after "ws4tx.v1"
 *     binaryType: undefined,    // 'blob' (the browser's default) or 'arraybuffer'
 *     recover: true,            // on a facility with history: ask for what was missed
 *     token: null,              // a function returning a token (or a Promise of one): see below
 *     resume: false,            // true: reconnect with the server's resume token (see below)
 *     maxQueryLength: 2048,     // the server's MAX_QUERY_LENGTH: recovery positions that
 *                               // would make the query longer are left out (see 'recovered')
 *     fetch: undefined,         // a fetch function instead of the global one (see 'refused')
 *     positions: null,          // {channel: {epoch, offset}} where the page's state stands
 *                               // ({% ws4tx_position %}): the first connect recovers from there
 *     getState: null,           // called once after each 'recovered' false (see below)
 *     sse: true,                // fall back to Server-Sent Events and POSTs (see below)
 *     retryWebSocket: 60000,    // ms on SSE before the WebSocket is tried again (doubling
 *                               // while it fails, at most 10 minutes; null: never)
 *     openTimeout: 20000,       // ms a WebSocket (or stream) may take to open; then it is
 *                               // given up and the backoff goes on (null: no limit)
 *     streamTimeout: 60000,     // ms an open stream may stay silent (the server's `: ping`
 *                               // comments come every 25 s); then it is dropped (null: never)
 *     csrfCookie: 'csrftoken',  // the cookie a POST sends in csrfHeader (Django's CSRF)
 *     csrfHeader: 'X-CSRFToken',
 *   });
 *   // Also: ws4tx.connect(uri, options). `uri` may be a function returning the URL, or a
 *   // Promise of it, called before every attempt (e.g. to fetch a fresh ?token=...).
 *   // `token`, when given, is called before every attempt too, and its token added to the
 *   // URL as ?token=... (do not put one in the URL then); and again when the server asks
 *   // for a fresh token because the connection's is about to expire ('ws4tx.refresh'):
 *   // ws4tx.js sends it back, the server checks it and keeps the connection open
 *   // ('refreshed' fires with {expires}); without it the server closes with 4002 at the
 *   // token's expiry and ws4tx.js reconnects (with a fresh token from the URL function).
 *   // `resume: true` asks the server for a resume token (resume= in the URL); the latest
 *   // one it sent ('ws4tx.session' event) is kept in memory and presents on the next
 *   // reconnect (resume=<token>, within maxQueryLength), which the server then admits
 *   // to the same channels without authenticating the cookie or token again; a token
 *   // the server refuses (logout, password change, expired) is simply ignored by it and
 *   // the connection authenticates as usual. A token is used for one attempt only.
 *
 *   client.on(name, fn) / client.once(name, fn) / client.off(name?, fn?)   (chainable)
 *     server events: fn(data) for {"ws4tx":"event","event":name,"data":data}
 *     'message'      fn(raw)  any frame that is not an envelope (string, Blob or ArrayBuffer)
 *     'connecting'   fn({attempt})             a socket is being opened
 *     'connected'    fn({protocol})            it is open
 *     'disconnected' fn({code, reason, wasClean, reconnect})   every socket that closes
 *     'reconnecting' fn({attempt, delay})      the next attempt (1, 2, ...) in `delay` ms
 *     'recovered'    fn({recovered, reason, channels})   after a reconnect that asked for
 *                    the messages missed meanwhile (a facility with history): recovered
 *                    true when every one of them was delivered (before this event, once,
 *                    in order); false with the reason otherwise (resync the page's state).
 *                    Positions that do not fit in the URL (maxQueryLength) are left out:
 *                    their channels are not recovered, reason 'query-too-long' (the
 *                    server's 'ws4tx.recovered' event names only those it was asked for)
 *     'refused'      fn({status, reason})   the server refuses this URL's handshake (an
 *                    HTTP status such as 400, 403, 404 or 414, and its reason): the client
 *                    stops (state 'closed') instead of dialing it again and again. A page
 *                    cannot see why a socket closed before it opened: after 2, 4, 8, ...
 *                    such closes in a row, ws4tx.js fetches the same URL without Upgrade,
 *                    which ws4tx answers with the handshake's refusal, if any (a server
 *                    that is down or answers 5xx is retried as before). A refused URL
 *                    with recovery positions is dialed once more without them.
 *     'transport'    fn({transport, previous})   the connection that opens is of another
 *                    transport ('websocket' or 'sse') than the last one (before 'connected')
 *     'refreshed'    fn({expires})   the server took the fresh token of the `token` function
 *                    and keeps the connection open until `expires` (Unix seconds)
 *   client.positions                     {channel: {epoch, offset}} of the last messages
 *                                        (or where the server said a channel stood);
 *                                        a message at or before it is not delivered again
 *   client.emit(name, data)              -> true when sent (nothing is queued while offline)
 *   client.emit(name, data, (err, reply) => ...)   with an acknowledgement
 *   client.request(name, data)           -> Promise of the reply; rejects with a
 *                                           WS4TX.AckError (code 'error', 'timeout',
 *                                           'disconnected' or 'not-connected')
 *   client.send(raw)                     -> true when sent: a raw frame (string/ArrayBuffer/Blob)
 *   client.close()                       for good: no reconnecting
 *   client.transport                     'websocket' or 'sse' (of the last connection)
 *
 * Server-Sent Events (docs/protocol.md, ws4tx.js on SSE): after two WebSockets that closed
 * before they opened, when a plain GET of the URL is answered (not a refusal, not 5xx,
 * 408 or 429: a server that is down keeps the WebSocket's backoff) and one more WebSocket
 * does not open, the URL is read as an
 * event stream (fetch, Accept: text/event-stream) and emit/request/send go by POST to it;
 * after a drop the stream resumes by Last-Event-ID; subscriptions wait ('subscribing') for
 * the WebSocket, which is tried again after retryWebSocket ms. WS4Redis never falls back.
 *
 * Subscriptions (one connection for several facilities; docs/protocol.md, Subscribe):
 *
 *   const client = new WS4TX('wss://example.com/ws/');   // the bare URL: no channel of its own
 *   const notes = client.subscribe('notifications', {
 *     audiences: ['user'],      // 'broadcast' (the default), 'user', 'groups', 'session'
 *     groups: undefined,        // some of the user's groups only
 *     grant: null,              // a signed grant ({% ws4tx_grant %}), or a function of one
 *                               // (or of a Promise of one) called before each subscribe;
 *                               // refused for it ('invalid grant: ...'): sent again without
 *     recover: true,            // the client's option by default
 *     positions: null,          // as the client's option, for its channels
 *     getState: null,           // as the client's option, called with the subscription as this
 *   });
 *   notes.on(name, fn) / once / off       its events: its channels' messages and events,
 *                                        'subscribed' ({channels}), 'refused' ({reason}:
 *                                        final; the client and its other subscriptions
 *                                        are as they were; a refusal that says to come
 *                                        back, the rate limit or 'retry later', is not
 *                                        told: the subscribe is sent again with backoff), 'unsubscribed', 'recovered',
 *                                        and the server's ws4tx.* events of the connection
 *   notes.emit / notes.request           as the client's, with "facility" in the envelope:
 *                                        to that facility's server-side handler
 *   notes.unsubscribe()                  -> Promise of the server's answer; final
 *   notes.state                          'subscribing' | 'subscribed' | 'unsubscribed' | 'refused'
 *   notes.positions, notes.channels, notes.facility
 *   client.subscriptions                 those not unsubscribed or refused
 *   A subscription is subscribed once the socket opens and again on every reconnect, with
 *   the positions of its channels in the subscribe frame (never in the URL), and told
 *   'recovered' as the client is. Every message of its channels names its channel (a
 *   publication: with a position on a channel with history, without one for a raw message
 *   of a channel without history and the stored replay) and goes to it alone, nothing of
 *   a channel it left; an event that names its facility (the server's events of a
 *   facility without history, a handler's emit, ws4tx.presence) goes to the subscriptions
 *   of that facility; a frame that names neither is the client's.
 *
 * Page-to-live handoff: a page rendered with its state and the position of its channels
 * (`positions`) connects and recovers every message published since the render, once. When
 * that cannot be done ('recovered' false: the history was trimmed, a new epoch), getState()
 * is called once (it may return a Promise): the page fetches its state anew; no live
 * message of those channels is applied before it settles, then the held ones are, in order,
 * without those at or before the positions its result may carry ({positions: {channel:
 * {epoch, offset}}}), and without the stored replay of the last message, which came before
 * the verdict. The same after every reconnect that could not recover.
 *   client.state                         'connecting' | 'connected' | 'reconnecting' | 'closed'
 *   client.readyState                    the current socket's readyState (3 without one)
 *
 * ws4redis.js compatibility (raw payloads only, no subprotocol requested):
 *
 *   const ws4redis = WS4Redis({uri, connecting, connected, disconnected, receive_message,
 *                              heartbeat_msg});      // `new` optional, 2nd argument ignored
 *   ws4redis.send_message(msg); ws4redis.close(); ws4redis.get_state(); ws4redis.is_connected();
 *
 * Close codes 1008, 4401 and 4403 from the server stop reconnecting; every other close
 * (1001 going away and 4001 closed by the site included: the new connection is
 * authenticated anew) is followed by a reconnect unless close() was called.
 */
(function (root, factory) {
  'use strict';
  var api = factory(root);
  if (typeof module === 'object' && module && module.exports) {
    module.exports = api;
  }
  if (root) {
    root.WS4TX = api.WS4TX;
    root.WS4Redis = api.WS4Redis;
    root.ws4tx = api;
  }
})(typeof window !== 'undefined' ? window : (typeof globalThis !== 'undefined' ? globalThis : this),
function (root) {
  'use strict';

  var SUBPROTOCOL = 'ws4tx.v1';
  /** Server close codes after which coming back is pointless: policy violation, auth. */
  var FINAL_CODES = [1008, 4401, 4403];
  /** The code ws4tx.js closes a socket with when its heartbeats go unanswered. */
  var HEARTBEAT_TIMEOUT = 4000;
  var ENVELOPE_MARK = '{"ws4tx":';
  var OPEN = 1;
  var CLOSED = 3;

  /** The server's default MAX_QUERY_LENGTH (its 414 past it). */
  var MAX_QUERY_LENGTH = 2048;
  /** Why a channel was not recovered when its position did not go to the server. */
  var QUERY_TOO_LONG = 'query-too-long';
  var REFUSED = 'refused';
  /** The server's answers to subscribe and unsubscribe frames. */
  var ANSWERS = ['subscribed', 'unsubscribed', 'refused'];
  /** Where the messages of a channel left by unsubscribe() go until the server's answer:
   *  nowhere. */
  var LEFT = {};
  /** Refusals of a subscribe that say to come back later: it is sent again. */
  var TRANSIENT = /^rate limit exceeded|retry later/;
  /** The prefix of the server's own event names. */
  var RESERVED = 'ws4tx.';

  var DEFAULTS = {
    heartbeat: null,
    heartbeatInterval: 5000,
    maxMissedHeartbeats: 3,
    reconnect: true,
    minDelay: 500,
    maxDelay: 30000,
    ackTimeout: 10000,
    protocols: [],
    binaryType: undefined,
    recover: true,
    token: null,
    resume: false,
    maxQueryLength: MAX_QUERY_LENGTH,
    WebSocket: undefined,  // a WebSocket constructor to use instead of the global one
    fetch: undefined,      // a fetch function to use instead of the global one
    positions: null,       // {channel: {epoch, offset}} rendered with the page: recover from there
    getState: null,        // called once after a 'recovered' false, before live messages go on
    sse: true,             // fall back to Server-Sent Events and POSTs (the event client)
    retryWebSocket: 60000, // ms on SSE before the WebSocket is tried again (doubling)
    openTimeout: 20000,    // ms a socket (or stream) may take to open before it is given up
    streamTimeout: 60000,  // ms an open stream may stay silent (the server pings each 25 s)
    csrfCookie: 'csrftoken',   // the cookie whose value a POST sends in csrfHeader
    csrfHeader: 'X-CSRFToken',
  };

  var later = typeof queueMicrotask === 'function'
    ? queueMicrotask
    : function (fn) { Promise.resolve().then(fn); };

  /** Report an exception thrown by application code without stopping ws4tx.js. */
  function report(error) {
    if (typeof root.reportError === 'function') {
      root.reportError(error);
    } else if (typeof console !== 'undefined') {
      console.error(error);
    }
  }

  /** Why an acknowledgement did not come: `code` is 'error' (the server answered with an
   *  error: `message` is its text), 'timeout', 'disconnected' or 'not-connected'. */
  class AckError extends Error {
    constructor(message, code, event) {
      super(message);
      this.name = 'AckError';
      this.code = code;
      this.event = event;
    }
  }

  /**
   * The connection machinery both clients share: one socket at a time, the heartbeat and
   * reconnecting with full-jitter exponential backoff. Subclasses get the hooks
   * _onConnecting(info), _onConnected(info, evt), _onFrame(data), _onDisconnected(info, evt)
   * and _onReconnecting(info).
   */
  class Connection {
    constructor(uri, options, protocols) {
      this._uri = uri;
      this._opts = Object.assign({}, DEFAULTS, options || {});
      // Left undefined (`{openTimeout: undefined}`): the default, not no limit.
      ['openTimeout', 'streamTimeout'].forEach(function (name) {
        if (this._opts[name] === undefined) this._opts[name] = DEFAULTS[name];
      }, this);
      this._protocols = protocols;
      this._ws = null;
      this._state = 'connecting';
      this._stopped = false;
      this._attempt = 0;          // reconnect attempts since the last successful connect
      this._retryTimer = null;
      this._openTimer = null;     // gives up the socket that does not open (openTimeout)
      this._beatTimer = null;
      this._missed = 0;
      this._dial = 0;             // counts attempts, so that a late URL promise is ignored
      this._dialedUrl = null;     // the URL of the last socket
      this._closedEarly = 0;      // sockets in a row that closed before they opened
      this._opens = 0;            // sockets that opened (a late probe answer is then ignored)
      this._probes = false;       // whether to ask why sockets close before they open
      this._fallback = false;     // whether to fall back to SSE (the event client)
      this._mode = 'websocket';   // what the next attempt dials: 'websocket' or 'sse'
      this._transport = 'websocket';  // what the last connection that opened was
      this._trying = false;       // this WebSocket attempt is a try from SSE
      this._tries = 0;            // tries of the WebSocket from SSE that failed in a row
      this._tryTimer = null;      // the next try of the WebSocket, while on SSE
      this._lastEventId = null;   // the id of the last event of the last SSE stream
      this._answering = false;    // the URL is answered over HTTP, its WebSocket is not
    }

    get state() { return this._state; }

    /** 'websocket' or 'sse': the transport of the connection (the last one that opened). */
    get transport() { return this._transport; }

    get readyState() { return this._ws ? this._ws.readyState : CLOSED; }

    /** Send a raw frame on the open socket; false (and nothing sent) otherwise. */
    send(raw) {
      var ws = this._ws;
      if (!ws || ws.readyState !== OPEN) return false;
      ws.send(raw);
      return true;
    }

    /** Close for good: no more reconnecting. The 'disconnected' hook runs at once when a
     *  socket was connecting or open. */
    close(code, reason) {
      if (this._stopped) return;
      this._stopped = true;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      clearTimeout(this._tryTimer);
      this._tryTimer = null;
      this._dial++;
      var ws = this._ws;
      if (ws) {
        code = code === undefined ? 1000 : code;
        reason = reason === undefined ? '' : String(reason);
        this._abandon(ws, code, reason);
        this._lost({code: code, reason: reason, wasClean: true}, null);
      } else {
        this._state = 'closed';
      }
    }

    /** Start an attempt: resolve the URL, then open a socket. */
    _connect() {
      this._retryTimer = null;
      if (this._stopped) return;
      this._state = 'connecting';
      var dial = ++this._dial;
      this._onConnecting({attempt: this._attempt});
      if (this._stopped || dial !== this._dial) return;  // a hook closed us
      var uri;
      try {
        uri = typeof this._uri === 'function' ? this._uri() : this._uri;
      } catch (error) {
        this._failedAttempt(error);
        return;
      }
      var self = this;
      var token = this._opts.token;
      if (typeof token === 'function') {
        // The URL and a fresh token, then the URL with the token.
        uri = Promise.all([uri, token()]).then(function (both) {
          return withParam(both[0], 'token', both[1]);
        });
      }
      if (uri && typeof uri.then === 'function') {
        uri.then(function (resolved) {
          if (dial === self._dial) self._open(resolved);
        }, function (error) {
          if (dial === self._dial) self._failedAttempt(error);
        });
      } else {
        this._open(uri);
      }
    }

    _open(uri) {
      var Socket = this._opts.WebSocket || root.WebSocket;
      var ws;
      try {
        uri = this._dialed(uri);
        if (this._mode === 'sse') {
          ws = new EventStream(probeUrl(uri) || uri, this._lastEventId, this._opts);
        } else {
          ws = this._protocols.length ? new Socket(uri, this._protocols) : new Socket(uri);
        }
      } catch (error) {
        this._failedAttempt(error);
        return;
      }
      if (this._opts.binaryType) ws.binaryType = this._opts.binaryType;
      this._ws = ws;
      this._dialedUrl = uri;
      var self = this;
      var opened = false;
      ws.onopen = function (evt) {
        opened = true;
        if (self._ws !== ws) return;
        self._clearOpenTimer();
        self._opened(evt);
      };
      ws.onmessage = function (evt) { if (self._ws === ws) self._received(evt.data); };
      // An error is always followed by a close event, which says what can be said.
      ws.onerror = function () {};
      var closed = function (evt) {
        if (self._ws !== ws) return;
        self._clearOpenTimer();
        if (ws.sse) {
          if (ws.lastEventId) self._lastEventId = ws.lastEventId;
          // The stream's own answer says the URL is refused (a page sees it here).
          if (evt.refusal) {
            self._refused(uri, evt.refusal);
            return;
          }
        }
        var early = !opened;
        self._closedEarly = early ? self._closedEarly + 1 : 0;
        var n = self._closedEarly;
        if (!ws.sse && early && self._fallback && (self._trying || self._answering)) {
          self._toSse();
        }
        self._lost({code: evt.code, reason: evt.reason, wasClean: evt.wasClean}, evt);
        if (!ws.sse && early && n >= 2 && (n & (n - 1)) === 0 && !self._stopped) {
          self._probe(uri);
        }
      };
      ws.onclose = closed;
      // A connection that is accepted and never answered (a server going down, a proxy
      // that holds the handshake) would leave the client 'connecting' for good: after
      // openTimeout ms the attempt is given up as a socket that closed before it opened,
      // and the backoff goes on.
      var limit = this._opts.openTimeout;
      this._clearOpenTimer();
      if (limit !== null && limit !== undefined && limit > 0) {
        this._openTimer = setTimeout(function () {
          self._openTimer = null;
          if (self._ws !== ws || opened) return;
          self._abandon(ws, 1000, '');
          closed({code: 1006, reason: 'opening timed out', wasClean: false});
        }, limit);
      }
    }

    _clearOpenTimer() {
      clearTimeout(this._openTimer);
      this._openTimer = null;
    }

    /**
     * WebSockets to the URL cannot open while the URL is answered over HTTP (the probe
     * after two of them closed before they opened, then one more: a proxy that strips
     * Upgrade, or answers something else than 101, is seen so by a page; a server that is
     * down is not), or a
     * try of the WebSocket from SSE failed: dial the same URL as an event stream from now
     * on, and try the WebSocket again after retryWebSocket ms (doubling after each failed
     * try).
     */
    _toSse() {
      var tried = this._trying;
      this._trying = false;
      this._answering = false;
      this._mode = 'sse';
      this._attempt = 0;
      this._closedEarly = 0;
      if (tried) this._tries++;
      var delay = this._opts.retryWebSocket;
      clearTimeout(this._tryTimer);
      this._tryTimer = null;
      if (delay === null || delay === undefined || !(delay >= 0)) return;
      delay = Math.min(MAX_WEBSOCKET_RETRY, delay * Math.pow(2, Math.min(this._tries, 30)));
      var self = this;
      this._tryTimer = setTimeout(function () { self._tryWebSocket(); }, delay);
    }

    /** Time to try the WebSocket again: the stream (if any) is closed and the WebSocket
     *  dialed at once; if it does not open, back to SSE at once (see _toSse). Recovery
     *  (positions in the URL) covers what is published meanwhile. */
    _tryWebSocket() {
      this._tryTimer = null;
      if (this._stopped || this._mode !== 'sse') return;
      this._mode = 'websocket';
      this._trying = true;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      var ws = this._ws;
      if (ws) {
        this._ws = null;
        if (ws.lastEventId) this._lastEventId = ws.lastEventId;
        this._abandon(ws, 1000, 'trying the WebSocket again');
        this._stopHeartbeat();
        if (ws.readyState === CLOSED && this._state === 'connected') {
          this._onDisconnected({code: 1000, reason: 'trying the WebSocket again',
                                wasClean: true, reconnect: true}, null);
        }
      }
      this._attempt = 0;
      this._connect();
    }

    /** No socket could even be made (bad URL, the URL function failed): retry like a drop. */
    _failedAttempt(error) {
      report(error);
      this._lost({code: 1006, reason: String((error && error.message) || error),
                  wasClean: false}, null);
    }

    _opened(evt) {
      this._attempt = 0;
      this._closedEarly = 0;
      this._opens++;
      this._state = 'connected';
      var transport = this._ws.sse ? 'sse' : 'websocket';
      this._answering = false;
      if (transport === 'websocket') {
        // Back on the WebSocket: its URL carries the positions; an id of a stream of
        // before would only make the next stream recover from further back.
        this._trying = false;
        this._tries = 0;
        this._lastEventId = null;
        clearTimeout(this._tryTimer);
        this._tryTimer = null;
      }
      var previous = this._transport;
      this._transport = transport;
      this._startHeartbeat();
      if (previous !== transport) {
        this._onTransport({transport: transport, previous: previous});
      }
      if (this._ws === null) return;  // a hook closed it
      this._onConnected({protocol: this._ws.protocol || ''}, evt);
    }

    _received(data) {
      var beat = this._opts.heartbeat;
      if (beat !== null && beat !== undefined && data === beat) {
        this._missed = 0;  // the server answered: it is alive
        return;
      }
      this._onFrame(data);
    }

    _startHeartbeat() {
      var beat = this._opts.heartbeat;
      if (beat === null || beat === undefined || beat === '') return;
      // A stream has the server's heartbeat comments; a POST each interval would be a
      // message of its own.
      if (this._ws && this._ws.sse) return;
      this._missed = 0;
      var self = this;
      this._beatTimer = setInterval(function () { self._beat(); },
                                    this._opts.heartbeatInterval);
    }

    _stopHeartbeat() {
      clearInterval(this._beatTimer);
      this._beatTimer = null;
    }

    _beat() {
      var ws = this._ws;
      if (!ws) return;
      if (this._missed >= this._opts.maxMissedHeartbeats) {
        // The server (or the network) is gone without a close: do not wait for the
        // closing handshake, which would never complete.
        this._abandon(ws, HEARTBEAT_TIMEOUT, 'missed heartbeats');
        this._lost({code: HEARTBEAT_TIMEOUT, reason: 'missed heartbeats', wasClean: false},
                   null);
        return;
      }
      this._missed++;
      try {
        ws.send(this._opts.heartbeat);
      } catch (error) {
        report(error);
      }
    }

    /** Forget a socket: no more events from it, and close it if it is not closed. */
    _abandon(ws, code, reason) {
      if (ws === this._ws) this._clearOpenTimer();
      ws.onopen = ws.onmessage = ws.onclose = null;
      // Not null: Node's `ws` package reports an aborted handshake as an error event, and
      // an error event that nobody listens to kills the process.
      ws.onerror = function () {};
      if (ws.readyState < 2) {
        try {
          ws.close(code, reason);
        } catch (error) {
          ws.close();  // a code the browser does not let a page send
        }
      }
    }

    /** The current socket is gone (or never came): tell, then retry or stop. */
    _lost(info, evt) {
      this._ws = null;
      this._clearOpenTimer();
      this._stopHeartbeat();
      var final = this._stopped || !this._opts.reconnect || FINAL_CODES.indexOf(info.code) >= 0;
      if (final) {
        this._stopped = true;
        this._state = 'closed';
      }
      info.reconnect = !final;
      this._onDisconnected(info, evt);
      if (!this._stopped && this._ws === null && this._retryTimer === null) {
        this._scheduleRetry();
      }
    }

    /** Full jitter: wait random(0, min(maxDelay, minDelay * 2 ** attempt)). */
    _scheduleRetry() {
      var exponent = Math.min(this._attempt, 30);
      var cap = Math.min(this._opts.maxDelay, this._opts.minDelay * Math.pow(2, exponent));
      var delay = Math.random() * cap;
      this._attempt++;
      this._state = 'reconnecting';
      var self = this;
      this._retryTimer = setTimeout(function () { self._connect(); }, delay);
      this._onReconnecting({attempt: this._attempt, delay: delay});
    }

    /**
     * Sockets to `uri` keep closing before they open: a refused handshake (414, 400, 403:
     * a page cannot see the status) or a server that is down. Ask the server by fetching
     * the same URL without Upgrade (ws4tx answers with the handshake's refusal); on a
     * refusal, stop dialing (see _refused). Anything else (no answer, 5xx, an admissible
     * URL) leaves the backoff as it is.
     */
    _probe(uri) {
      var get = this._opts.fetch || root.fetch;
      if (!this._probes || typeof get !== 'function') return;
      var url = probeUrl(uri);
      if (url === null) return;
      var self = this;
      var opens = this._opens;
      Promise.resolve().then(function () {
        return get(url, {credentials: 'include', cache: 'no-store'});
      }).then(function (response) {
        return Promise.resolve(refusal(response)).then(function (verdict) {
          var current = !self._stopped && self._opens === opens
            && self._state !== 'connected';
          if (verdict && current) {
            self._refused(uri, verdict);
          } else if (!verdict && current && self._fallback && self._mode === 'websocket'
                     && response && response.status < 500 && response.status !== 408
                     && response.status !== 429) {
            // The URL is answered, its WebSocket does not open: SSE once one more
            // WebSocket did not open either (a server that was just starting, and answers
            // now, would have let it open).
            self._answering = true;
          }
        });
      }).catch(function () {});
    }

    /** The server refuses `uri`: stop (a subclass may try another URL instead). */
    _refused(uri, verdict) {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._dial++;
      var ws = this._ws;
      if (ws) {
        this._ws = null;
        this._abandon(ws, 1000, '');
      }
      this._stopped = true;
      this._state = 'closed';
      this._onRefused(verdict);
    }

    // Hooks
    _dialed(uri) { return uri; }
    _onRefused() {}
    _onTransport() {}
    _onConnecting() {}
    _onConnected() {}
    _onFrame() {}
    _onDisconnected() {}
    _onReconnecting() {}
  }

  /** The URL a WebSocket URL `uri` is as an HTTP one (ws: -> http:), or null. */
  function probeUrl(uri) {
    var url = parseUrl(uri);
    if (url === null) return null;
    if (url.protocol === 'ws:') url.protocol = 'http:';
    else if (url.protocol === 'wss:') url.protocol = 'https:';
    return url.href;
  }

  /** `uri` parsed as the WebSocket constructor does (relative to the page), or null. */
  function parseUrl(uri) {
    try {
      var base = root && root.location && root.location.href;
      return base ? new URL(String(uri), base) : new URL(String(uri));
    } catch (error) {
      return null;
    }
  }

  /** The length of the query string the server gets for `uri` (percent-encoded). */
  function queryLength(uri) {
    var url = parseUrl(uri);
    if (url !== null) return Math.max(0, url.search.length - 1);
    uri = String(uri);
    var hash = uri.indexOf('#');
    var head = hash >= 0 ? uri.slice(0, hash) : uri;
    var mark = head.indexOf('?');
    return mark >= 0 ? head.length - mark - 1 : 0;
  }

  /** What an answer to a plain GET of a WebSocket URL says: {status, reason} when the
   *  handshake is refused (ws4tx's JSON, or a 414/431 from anyone), else null. */
  function refusal(response) {
    var status = response && response.status;
    if (!(status >= 400 && status < 500) || status === 408 || status === 429) return null;
    return Promise.resolve(response.text()).then(function (text) {
      var answer = null;
      try {
        answer = JSON.parse(text);
      } catch (error) { /* not ws4tx's answer */ }
      if (answer && answer.ws4tx === 'refused') {
        return {status: status, reason: String(answer.reason || '')};
      }
      if (status === 414 || status === 431) {
        return {status: status, reason: String(text || response.statusText || '').trim()};
      }
      return null;
    });
  }

  /** `uri` with the query parameter `name`=`value` added (before any #fragment). */
  function withParam(uri, name, value) {
    uri = String(uri);
    var hash = uri.indexOf('#');
    var tail = hash >= 0 ? uri.slice(hash) : '';
    var head = hash >= 0 ? uri.slice(0, hash) : uri;
    return head + (head.indexOf('?') >= 0 ? '&' : '?') + encodeURIComponent(name) + '='
      + encodeURIComponent(String(value)) + tail;
  }

  /** The envelope in a text frame, or null for a raw payload (or an invalid envelope). */
  function parseEnvelope(text) {
    if (typeof text !== 'string') return null;
    var start = text.trimStart ? text.trimStart() : text.replace(/^\s+/, '');
    if (start.slice(0, ENVELOPE_MARK.length) !== ENVELOPE_MARK) return null;
    var obj;
    try {
      obj = JSON.parse(text);
    } catch (error) {
      return null;
    }
    if (!obj || typeof obj !== 'object' || Array.isArray(obj)) return null;
    if (obj.ws4tx === 'event' && typeof obj.event === 'string' && obj.event) return obj;
    if (obj.ws4tx === 'ack' && Number.isInteger(obj.id) && obj.id >= 0) return obj;
    if (ANSWERS.indexOf(obj.ws4tx) >= 0 && Number.isInteger(obj.id) && obj.id >= 0) return obj;
    if (obj.ws4tx === 'pub' && typeof obj.channel === 'string'
        && ((Number.isInteger(obj.offset) && typeof obj.epoch === 'string')
            || (obj.offset === undefined && obj.epoch === undefined))
        && (typeof obj.data === 'string' || typeof obj.data64 === 'string')) return obj;
    return null;
  }

  /** The part of a 'ws4tx.recovered' verdict about `channels` (some of its channels). */
  function partOf(verdict, channels) {
    var failed = null;
    Object.keys(channels).forEach(function (channel) {
      var one = channels[channel];
      if (!failed && !(one && one.recovered)) failed = one || {};
    });
    if (!failed) return {recovered: true, channels: channels};
    return {recovered: false, reason: failed.reason || (verdict && verdict.reason),
            channels: channels};
  }

  /** The bytes of a base64 string, as the socket's binaryType would give them. */
  function binary(data64, binaryType) {
    var text = atob(data64);
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return binaryType === 'arraybuffer' ? bytes.buffer : new Blob([bytes]);
  }

  /** How long after a switch to SSE the WebSocket is tried again, at most (ms): the
   *  delay (option retryWebSocket) doubles after each try that failed, up to this. */
  var MAX_WEBSOCKET_RETRY = 600000;

  /** The envelope's id of a text frame (an event with an acknowledgement), or null. */
  function envelopeId(text) {
    var envelope = parseEnvelope(text);
    return envelope && Number.isInteger(envelope.id) ? envelope.id : null;
  }

  /** The value of cookie `name` of the page (null outside a page, or without it). */
  function cookie(name) {
    var doc = root && root.document;
    if (!doc || typeof doc.cookie !== 'string' || !name) return null;
    var parts = doc.cookie.split(';');
    for (var i = 0; i < parts.length; i++) {
      var part = parts[i].trim();
      if (part.slice(0, name.length + 1) === name + '=') {
        return decodeURIComponent(part.slice(name.length + 1));
      }
    }
    return null;
  }

  /** `url` (http:) without the parameters that belong to one stream: recover= (the
   *  stream's recovery) and resume= (a token good for one attempt). */
  function postUrl(url) {
    url = String(url);
    var hash = url.indexOf('#');
    var head = hash >= 0 ? url.slice(0, hash) : url;
    var mark = head.indexOf('?');
    if (mark < 0) return head;
    var kept = head.slice(mark + 1).split('&').filter(function (part) {
      var name = part.split('=')[0];
      return name !== 'recover' && name !== 'resume';
    });
    return head.slice(0, mark) + (kept.length ? '?' + kept.join('&') : '');
  }

  /**
   * The same URL as a Server-Sent Events stream (docs/protocol.md, Server-Sent Events),
   * with the few members of a WebSocket that Connection uses: readyState, protocol,
   * onopen, onmessage, onclose, send() and close(). What it gets is what a ws4tx.v1
   * socket would: a message's data as a frame, a named event as an event envelope. What
   * it sends goes by POST to the same URL, one after the other, and the envelopes of the
   * answer (an acknowledgement, a refusal, events a handler emitted) come back as frames;
   * a refused POST of an event with an id comes back as that id's error.
   *
   * The stream is read with fetch rather than EventSource, which hears only events whose
   * names it was given beforehand and cannot send Last-Event-ID on a stream of its own
   * making: `lastEventId` is the id of the last event, which the next stream sends.
   */
  class EventStream {
    constructor(url, lastEventId, options) {
      this.sse = true;
      this.url = url;
      this.protocol = SUBPROTOCOL;
      this.readyState = 0;
      this.lastEventId = lastEventId || '';
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this._fetch = options.fetch || root.fetch;
      this._csrf = options;
      this._abort = typeof AbortController === 'function' ? new AbortController() : null;
      this._posting = Promise.resolve();
      this._closing = null;       // the server's ws4tx.closed {code, reason}
      this._silence = options.streamTimeout;  // ms without a byte before the stream is dead
      this._silent = null;        // the timer of that
      var self = this;
      later(function () { self._start(); });
    }

    _start() {
      if (this.readyState !== 0) return;
      var headers = {Accept: 'text/event-stream'};
      if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
      var self = this;
      Promise.resolve().then(function () {
        return self._fetch.call(root, self.url, {
          headers: headers, credentials: 'include', cache: 'no-store',
          signal: self._abort ? self._abort.signal : undefined});
      }).then(function (response) {
        if (self.readyState !== 0) return undefined;
        var type = String((response.headers && response.headers.get('content-type')) || '');
        if (response.status !== 200 || type.indexOf('text/event-stream') < 0
            || !response.body) {
          return Promise.resolve(refusal(response)).then(function (verdict) {
            self._end({code: 1006, reason: 'HTTP ' + response.status, wasClean: false,
                       refusal: verdict || null});
          });
        }
        self.readyState = OPEN;
        var reader = response.body.getReader();
        self._heard(reader);
        if (self.onopen) self.onopen({type: 'open'});
        return self._read(reader);
      }).catch(function (error) {
        self._end({code: 1006, reason: String((error && error.message) || error),
                   wasClean: false});
      });
    }

    /** Read events until the stream ends. */
    _read(reader) {
      var self = this;
      var decoder = new TextDecoder('utf-8');
      var rest = '';
      var event = {data: [], name: '', id: null};
      var step = function () {
        return reader.read().then(function (chunk) {
          if (self.readyState !== OPEN) {
            reader.cancel().catch(function () {});
            return undefined;
          }
          self._heard(reader);
          if (chunk.done) {
            var closing = self._closing;
            self._end(closing ? {code: closing.code, reason: closing.reason, wasClean: true}
                      : {code: 1006, reason: 'the stream ended', wasClean: false});
            return undefined;
          }
          // Lines end with LF, or CR LF (ws4tx's end with LF).
          var lines = (rest + decoder.decode(chunk.value, {stream: true})).split('\n');
          rest = lines.pop();
          for (var i = 0; i < lines.length && self.readyState === OPEN; i++) {
            var line = lines[i];
            if (line.slice(-1) === '\r') line = line.slice(0, -1);
            event = self._line(line, event);
          }
          return step();
        });
      };
      return step();
    }

    /** Bytes came (or the stream opened): the stream is alive for streamTimeout ms more.
     *  The server's `: ping` comments keep a quiet stream alive; a stream that goes
     *  silent (a connection lost without a close) is ended like one that dropped. */
    _heard(reader) {
      clearTimeout(this._silent);
      this._silent = null;
      var limit = this._silence;
      if (this.readyState !== OPEN || limit === null || limit === undefined || !(limit > 0)) {
        return;
      }
      var self = this;
      this._silent = setTimeout(function () {
        self._silent = null;
        reader.cancel().catch(function () {});
        self._end({code: 1006, reason: 'the stream went silent', wasClean: false});
      }, limit);
    }

    /** One line of the stream (the SSE format): a field of `event`, or its end. */
    _line(line, event) {
      if (line === '') {
        if (event.id !== null) this.lastEventId = event.id;
        if (event.data.length) this._dispatch(event.name, event.data.join('\n'));
        return {data: [], name: '', id: null};
      }
      if (line.charAt(0) === ':') return event;  // a comment: the server's heartbeat
      var colon = line.indexOf(':');
      var field = colon < 0 ? line : line.slice(0, colon);
      var value = colon < 0 ? '' : line.slice(colon + (line.charAt(colon + 1) === ' ' ? 2 : 1));
      if (field === 'data') event.data.push(value);
      else if (field === 'event') event.name = value;
      else if (field === 'id' && value.indexOf('\0') < 0) event.id = value;
      return event;
    }

    _dispatch(name, data) {
      var frame = data;
      if (name === 'ws4tx.closed') {
        // The server ends the stream: a WebSocket would have been closed with this code.
        var closing = null;
        try {
          closing = JSON.parse(data);
        } catch (error) { /* no code */ }
        if (closing && Number.isInteger(closing.code)) {
          this._closing = {code: closing.code, reason: String(closing.reason || '')};
        }
        return;
      }
      if (name && name !== 'message') {
        frame = '{"ws4tx":"event","event":' + JSON.stringify(name) + ',"data":'
          + (data.trim() ? data : 'null') + '}';
      }
      if (this.onmessage) this.onmessage({data: frame});
    }

    /** POST `data` (a text frame, or binary) to the URL, after those sent before. */
    send(data) {
      if (this.readyState !== OPEN) throw new Error('the event stream is not open');
      var text = typeof data === 'string';
      var id = text ? envelopeId(data) : null;
      var headers = {'Content-Type': text ? 'text/plain;charset=UTF-8'
                                           : 'application/octet-stream'};
      var token = cookie(this._csrf.csrfCookie);
      if (token) headers[this._csrf.csrfHeader] = token;
      var self = this;
      var url = postUrl(this.url);
      this._posting = this._posting.then(function () {
        return self._fetch.call(root, url, {method: 'POST', body: data, headers: headers,
                                            credentials: 'include', cache: 'no-store'});
      }).then(function (response) {
        return Promise.resolve(response.text()).then(function (body) {
          var answer = null;
          try {
            answer = JSON.parse(body);
          } catch (error) { /* not ws4tx's answer */ }
          if (Array.isArray(answer)) {
            answer.forEach(function (envelope) { self._answer(JSON.stringify(envelope)); });
          } else if (response.status >= 300 && id !== null) {
            var reason = answer && answer.reason ? String(answer.reason)
              : 'HTTP ' + response.status;
            self._answer(JSON.stringify({ws4tx: 'ack', id: id, error: reason}));
          }
        });
      }).catch(function (error) {
        if (id !== null) {
          self._answer(JSON.stringify({ws4tx: 'ack', id: id,
                                       error: String((error && error.message) || error)}));
        }
      });
    }

    _answer(frame) {
      if (this.readyState === OPEN && this.onmessage) this.onmessage({data: frame});
    }

    close(code, reason) {
      this._end({code: code === undefined ? 1000 : code,
                 reason: reason === undefined ? '' : String(reason), wasClean: true});
    }

    _end(info) {
      if (this.readyState >= 2) return;
      this.readyState = CLOSED;
      clearTimeout(this._silent);
      this._silent = null;
      if (this._abort) this._abort.abort();
      var onclose = this.onclose;
      if (onclose) {
        later(function () {
          onclose({type: 'close', code: info.code, reason: info.reason,
                   wasClean: info.wasClean, refusal: info.refusal || null});
        });
      }
    }
  }

  /**
   * What the client and each of its subscriptions have: handlers, the positions of their
   * channels with history, and the page-to-live handoff (getState): while a verdict on the
   * recovery it asked for is awaited, and while the page's state is fetched after a
   * 'recovered' false, their messages are held, then applied in order (those the state
   * covers dropped).
   */
  class Scope {
    constructor(options) {
      scoped(this, options);
    }

    on(event, fn) {
      if (typeof fn !== 'function') throw new TypeError('WS4TX.on: a handler is a function');
      var list = this._handlers.get(event);
      if (!list) this._handlers.set(event, list = []);
      list.push(fn);
      return this;
    }

    once(event, fn) {
      if (typeof fn !== 'function') throw new TypeError('WS4TX.once: a handler is a function');
      var self = this;
      var wrapper = function (data) {
        self.off(event, wrapper);
        return fn.call(this, data);
      };
      wrapper.listener = fn;  // so that off(event, fn) removes it too
      return this.on(event, wrapper);
    }

    /** off(): every handler; off(event): that event's; off(event, fn): that one. */
    off(event, fn) {
      if (event === undefined) {
        this._handlers.clear();
      } else if (fn === undefined) {
        this._handlers.delete(event);
      } else {
        var list = this._handlers.get(event);
        if (list) {
          var kept = list.filter(function (h) { return h !== fn && h.listener !== fn; });
          if (kept.length) this._handlers.set(event, kept);
          else this._handlers.delete(event);
        }
      }
      return this;
    }

    /** The last position of each channel with history: {channel: {epoch, offset}}. */
    get positions() {
      var result = {};
      this._positions.forEach(function (position, channel) {
        result[channel] = {epoch: position.epoch, offset: position.offset};
      });
      return result;
    }

    _fire(event, data) {
      var list = this._handlers.get(event);
      if (!list) return;
      list = list.slice();  // handlers may add or remove handlers
      for (var i = 0; i < list.length; i++) {
        try {
          list[i].call(this, data);
        } catch (error) {
          report(error);
        }
      }
    }

    /** The server's 'ws4tx.positions': where channels stand that this scope has no
     *  message of yet (or whose history is gone), so that it recovers from there. */
    _learn(data) {
      seed(this._positions, data && data.channels);
    }

    /** A message for this scope: applied now, or held (see the class). `item.channel`,
     *  when there, is the message's position (a publication envelope). */
    _take(item) {
      if (this._held) {
        item.early = this._awaiting;
        this._held.push(item);
      } else {
        this._apply(item);
      }
    }

    /** Apply a message unless its channel's position is at or past it (delivered already,
     *  or covered by the page's state). */
    _apply(item) {
      if (item.channel !== undefined) {
        var last = this._positions.get(item.channel);
        if (last && last.epoch === item.epoch && item.offset <= last.offset) return;
        this._positions.set(item.channel, {epoch: item.epoch, offset: item.offset});
      }
      item.run();
    }

    /** A recovery verdict is coming: with getState, hold messages until it came. */
    _expectVerdict() {
      this._awaiting = true;
      if (this._getState && !this._held) this._held = [];
    }

    /** No verdict is coming after all (nothing was asked): let held messages go. */
    _noVerdict() {
      this._awaiting = false;
      if (this._held && !this._resyncing) this._release(null);
    }

    /** The recovery's verdict: tell the page ('recovered'); when it is false and the page
     *  gave getState, call it once and apply what was held after its state is in place. */
    _judged(verdict) {
      var awaited = this._awaiting;
      this._awaiting = false;
      this._fire('recovered', verdict);
      if (verdict && verdict.recovered === false && this._getState) {
        if (awaited && this._held) {
          // Frames without a position before the verdict (the stored replay of a
          // channel's last message) are older than the state the page fetches.
          this._held = this._held.filter(function (item) {
            return item.channel !== undefined || !item.early;
          });
        }
        this._resync();
      } else if (!this._resyncing) {
        this._release(null);
      }
    }

    _resync() {
      if (this._resyncing) return;
      this._resyncing = true;
      if (!this._held) this._held = [];
      var self = this;
      var getState = this._getState;
      Promise.resolve().then(function () { return getState.call(self); }).then(
        function (state) {
          self._resyncing = false;
          self._release(state && typeof state === 'object' ? state.positions : null);
        },
        function (error) {
          report(error);
          self._resyncing = false;
          self._release(null);
        });
    }

    /** Apply what was held, in order, after the state's positions (when it gave some):
     *  a message at or before them is covered by the state and dropped. */
    _release(positions) {
      if (this._awaiting) return;  // a verdict of a new connection is awaited
      seed(this._positions, positions, true);
      var held = this._held;
      this._held = null;
      if (!held) return;
      for (var i = 0; i < held.length; i++) this._apply(held[i]);
    }

    /** A payload of a publication envelope, as if it had come alone: an application event
     *  or a raw message. */
    _payload(envelope, binaryType) {
      if (typeof envelope.data64 === 'string') {
        this._fire('message', binary(envelope.data64, binaryType));
        return;
      }
      var inner = parseEnvelope(envelope.data);
      if (inner !== null && inner.ws4tx === 'event') {
        this._fire(inner.event, inner.data === undefined ? null : inner.data);
      } else {
        this._fire('message', envelope.data);
      }
    }
  }

  /** A Scope's fields (WS4TX has them too, its methods copied from Scope's). */
  function scoped(self, options) {
    self._handlers = new Map();
    self._positions = new Map();  // channel -> {epoch, offset} of its last message
    self._getState = options && typeof options.getState === 'function'
      ? options.getState : null;
    self._held = null;            // messages held back: [{channel, epoch, offset, run, early}]
    self._awaiting = false;       // a recovery verdict is awaited
    self._resyncing = false;      // getState() is running
    seed(self._positions, options && options.positions);
  }

  /** Set `map`'s positions from `channels` ({channel: {epoch, offset}}), the valid ones;
   *  with `newer`, only where they are past the one it has (of the same epoch). */
  function seed(map, channels, newer) {
    if (!channels || typeof channels !== 'object') return;
    Object.keys(channels).forEach(function (channel) {
      var position = channels[channel];
      if (position && typeof position.epoch === 'string'
          && Number.isInteger(position.offset) && position.offset >= 0) {
        var last = map.get(channel);
        if (newer && last && last.epoch === position.epoch && last.offset >= position.offset) {
          return;
        }
        map.set(channel, {epoch: position.epoch, offset: position.offset});
      }
    });
  }

  /** The audiences of a subscribe frame, from subscribe()'s options: `audiences`, names
   *  ('broadcast', 'user', 'group' or 'groups', 'session'; ['broadcast'] by default) or
   *  the frame's object itself, and `groups`, a list of some of the user's groups. */
  function audiencesOf(options) {
    var given = options.audiences === undefined ? ['broadcast'] : options.audiences;
    var result = {};
    if (Array.isArray(given) || typeof given === 'string') {
      [].concat(given).forEach(function (name) {
        if (name === 'group' || name === 'groups') result.groups = true;
        else if (name === 'broadcast' || name === 'user' || name === 'session') result[name] = true;
        else throw new TypeError('WS4TX.subscribe: unknown audience ' + JSON.stringify(name));
      });
    } else if (given && typeof given === 'object') {
      Object.assign(result, given);
    } else {
      throw new TypeError('WS4TX.subscribe: audiences is a list of names');
    }
    if (Array.isArray(options.groups)) result.groups = options.groups.slice();
    if (!Object.keys(result).length) throw new TypeError('WS4TX.subscribe: no audience');
    return result;
  }

  /**
   * A facility's channels on a client's connection (client.subscribe(facility, options)):
   * its own handlers, state, positions and recovery; restored on every reconnect.
   */
  class Subscription extends Scope {
    constructor(client, facility, options) {
      super(options);
      this._client = client;
      this.facility = facility;
      this._audiences = audiencesOf(options);
      this._recover = options.recover === undefined ? client._opts.recover !== false
        : Boolean(options.recover);
      this._state = 'subscribing';
      this._channels = [];
      this._leaving = null;         // unsubscribe() while the subscribe was unanswered: the
                                    // resolve of the Promise it returned
      this._inFlight = false;       // a subscribe frame awaits its answer
      this._grant = options.grant === undefined ? null : options.grant;
      this._retryTimer = null;      // the next subscribe after a refusal to come back
      this._refusals = 0;           // such refusals in a row
    }

    /** 'subscribing' | 'subscribed' | 'unsubscribed' | 'refused'. */
    get state() { return this._state; }

    /** The channels the server subscribed (empty until 'subscribed'). */
    get channels() { return this._channels.slice(); }

    /** emit() with the subscription's facility in the envelope. */
    emit(event, data, callback) {
      return this._client._emit(event, data, callback, this.facility);
    }

    request(event, data) {
      return this._client._request(event, data, this.facility);
    }

    /** Leave the channels (at once for the page: nothing of them is delivered after);
     *  a Promise of the server's answer (at once when not connected). */
    unsubscribe() {
      if (this._state === 'unsubscribed' || this._state === 'refused') {
        return Promise.resolve();
      }
      var client = this._client;
      var answered = null;
      if (this._state === 'subscribed') {
        var channels = this._channels;
        answered = client._send({ws4tx: 'unsubscribe', facility: this.facility,
                                 audiences: this._audiences}, function () {
          client._unmute(channels);
        });
      }
      var self = this;
      if (!answered && this._inFlight) {
        // The subscribe is on its way: unsubscribe once it is answered.
        answered = new Promise(function (resolve) { self._leaving = resolve; });
      }
      this._end('unsubscribed');
      // What is on its way before the server's answer is dropped, not the client's.
      if (answered && !this._leaving) client._mute(this._channels);
      this._fire('unsubscribed', null);
      return answered || Promise.resolve(null);
    }

    /** It is over (unsubscribed, refused, the client closed): held messages are dropped. */
    _end(state) {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._state = state;
      this._held = null;
      this._awaiting = false;
      this._client._forget(this);
    }

    /** The subscribe frame, with the positions to recover from. */
    _frame() {
      var frame = {ws4tx: 'subscribe', facility: this.facility, audiences: this._audiences};
      if (this._recover && this._positions.size) {
        var recover = {};
        this._positions.forEach(function (position, channel) {
          recover[channel] = position.epoch + ':' + position.offset;
        });
        frame.recover = recover;
        this._expectVerdict();
      } else {
        this._noVerdict();
      }
      return frame;
    }

    _answered(answer) {
      this._inFlight = false;
      var leaving = this._leaving;
      this._leaving = null;
      if (!answer || answer.ws4tx !== 'subscribed') {
        if (leaving) leaving(null);  // nothing to leave on the server
        if (!answer) return;  // the connection dropped first
      }
      if (answer.ws4tx === 'subscribed') {
        if (this._state !== 'subscribing') {
          // Left meanwhile: leave on the server too.
          if (leaving) {
            var client = this._client;
            var left = Array.isArray(answer.channels) ? answer.channels.slice() : [];
            client._mute(left);
            client._send({ws4tx: 'unsubscribe', facility: this.facility,
                          audiences: this._audiences}, function () { client._unmute(left); })
              .then(leaving);
          }
          return;
        }
        var channels = Array.isArray(answer.channels) ? answer.channels.slice() : [];
        this._channels = channels;
        var positions = this._positions;
        positions.forEach(function (position, channel) {
          if (channels.indexOf(channel) < 0) positions.delete(channel);
        });
        this._state = 'subscribed';
        this._refusals = 0;
        this._client._route(this);
        this._fire('subscribed', {channels: channels.slice()});
      } else if (answer.ws4tx === 'refused') {
        if (this._state !== 'subscribing') return;
        if (this._granted && /^invalid grant/.test(String(answer.reason || ''))) {
          // An expired grant, say: authenticated as usual from now on.
          this._grant = null;
          this._client._subscribeNow(this);
          return;
        }
        if (TRANSIENT.test(String(answer.reason || ''))) {
          this._retryLater();
          return;
        }
        this._end('refused');
        this._fire('refused', {reason: String(answer.reason || '')});
      }
    }

    /** A refusal that says to come back (the rate limit, the authentication queue):
     *  subscribe again on the same connection after a full-jitter backoff. */
    _retryLater() {
      var client = this._client;
      var exponent = Math.min(this._refusals++, 30);
      var cap = Math.min(client._opts.maxDelay, client._opts.minDelay * Math.pow(2, exponent));
      var self = this;
      this._awaiting = false;
      clearTimeout(this._retryTimer);
      this._retryTimer = setTimeout(function () {
        self._retryTimer = null;
        if (self._state === 'subscribing' && client._subscribable()) {
          client._subscribeNow(self);
        }
      }, Math.random() * cap);
    }

    /** The connection dropped: subscribing again on the next one. */
    _dropped() {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      if (this._state !== 'subscribed' && this._state !== 'subscribing') return;
      this._state = 'subscribing';
      this._awaiting = false;
    }
  }

  /** The event client: see the header. */
  class WS4TX extends Connection {
    constructor(uri, options) {
      options = Object.assign({}, options || {});
      var extra = [].concat(options.protocols || []).filter(function (p) {
        return p !== SUBPROTOCOL;
      });
      super(uri, options, [SUBPROTOCOL].concat(extra));
      scoped(this, options);
      this._pending = new Map();  // ack id -> {event, callback, timer}
      this._nextId = 1;
      this._subscriptions = [];     // the Subscriptions to (re)subscribe, in order
      this._byChannel = new Map();  // channel -> the Subscription that has it
      this._answers = new Map();    // subscribe/unsubscribe id -> fn(answer)
      this._probes = true;
      this._fallback = this._opts.sse !== false;
      this._asked = 0;              // positions the current socket's URL carries
      this._unsent = null;          // {channel: reason} of the positions it left out
      this._skipPositions = null;   // {reason, once}: dial without positions (refused)
      this._resume = null;          // the server's latest resume token (memory only)
      // Connect once the caller had a chance to add its handlers ('connecting' included).
      var self = this;
      later(function () { self._connect(); });
    }

    /**
     * Send event `event` with JSON `data`. With a `callback(err, reply)`, the server is asked
     * for an acknowledgement. Returns whether the event was sent: while not connected nothing
     * is sent or queued (the callback then gets a 'not-connected' AckError).
     */
    emit(event, data, callback) {
      return this._emit(event, data, callback, undefined);
    }

    /** emit() with an acknowledgement, as a Promise of the reply. */
    request(event, data) {
      return this._request(event, data, undefined);
    }

    /**
     * Subscribe to `facility`'s channels on this connection (docs/protocol.md, Subscribe):
     * a Subscription, subscribed now or once connected, and again after every reconnect
     * with the positions of its channels (recovery). options: `audiences` (['broadcast'],
     * 'user', 'groups', 'session'), `groups` (some of the user's groups), `recover`
     * (the client's), `positions` and `getState` (as the client's, for its channels).
     */
    subscribe(facility, options) {
      if (typeof facility !== 'string' || !facility) {
        throw new TypeError('WS4TX.subscribe: a facility is a non-empty string');
      }
      var subscription = new Subscription(this, facility, Object.assign({}, options || {}));
      if (this._stopped) {
        subscription._state = 'unsubscribed';
        return subscription;
      }
      this._subscriptions.push(subscription);
      if (this._subscribable()) this._subscribeNow(subscription);
      return subscription;
    }

    /** Whether subscribe frames can go now: a WebSocket is open. On SSE they cannot (the
     *  server refuses a subscribe by POST: a stream's channels are those of its URL):
     *  subscriptions wait, 'subscribing', for the WebSocket to be back. */
    _subscribable() {
      var ws = this._ws;
      return Boolean(ws && ws.readyState === OPEN && !ws.sse);
    }

    /** The subscriptions this client subscribes (not those unsubscribed or refused). */
    get subscriptions() { return this._subscriptions.slice(); }

    _subscribeNow(subscription) {
      var self = this;
      var ws = this._ws;
      var grant = subscription._grant;
      var send = function (granted) {
        if (self._ws !== ws || !ws || subscription._state !== 'subscribing') {
          subscription._answered(null);  // gone meanwhile: nothing to send or wait for
          return;
        }
        var frame = subscription._frame();
        subscription._granted = typeof granted === 'string' && granted !== '';
        if (subscription._granted) frame.grant = granted;
        subscription._inFlight = true;
        self._send(frame, function (answer) { subscription._answered(answer); });
      };
      if (typeof grant !== 'function') {
        send(grant);
        return;
      }
      subscription._inFlight = true;  // an unsubscribe() meanwhile waits for the answer
      Promise.resolve().then(function () { return grant.call(subscription); }).then(
        send, function (error) { report(error); send(null); });
    }

    /** Send a subscribe or unsubscribe `frame` with the next id; `then(answer)` gets its
     *  answer; a Promise of it (that does not reject: the connection may drop first). */
    _send(frame, then) {
      var id = this._nextId++;
      frame.id = id;
      var self = this;
      return new Promise(function (resolve) {
        self._answers.set(id, function (answer) {
          if (then) then(answer);
          resolve(answer);
        });
        if (!self.send(JSON.stringify(frame))) {
          self._answers.delete(id);
          if (then) then(null);
          resolve(null);
        }
      });
    }

    /** `subscription` has its channels: their messages go to it. */
    _route(subscription) {
      var map = this._byChannel;
      subscription._channels.forEach(function (channel) { map.set(channel, subscription); });
    }

    /** Drop what comes of `channels` (left, the server's answer not there yet). */
    _mute(channels) {
      var map = this._byChannel;
      channels.forEach(function (channel) { map.set(channel, LEFT); });
    }

    _unmute(channels) {
      var map = this._byChannel;
      channels.forEach(function (channel) {
        if (map.get(channel) === LEFT) map.delete(channel);
      });
    }

    /** `subscription` is over: nothing more goes to it, it is not restored. */
    _forget(subscription) {
      var map = this._byChannel;
      subscription._channels.forEach(function (channel) {
        if (map.get(channel) === subscription) map.delete(channel);
      });
      var i = this._subscriptions.indexOf(subscription);
      if (i >= 0) this._subscriptions.splice(i, 1);
    }

    _emit(event, data, callback, facility) {
      if (typeof event !== 'string' || !event) {
        throw new TypeError('WS4TX.emit: an event name is a non-empty string');
      }
      // Key order matters: the server knows an envelope by its first key, "ws4tx".
      var frame = {ws4tx: 'event', event: event, data: data === undefined ? null : data};
      if (facility !== undefined) frame.facility = facility;
      if (typeof callback !== 'function') {
        return this.send(JSON.stringify(frame));
      }
      if (!this._ws || this._ws.readyState !== OPEN) {
        var error = new AckError('not connected', 'not-connected', event);
        later(function () { callback(error); });
        return false;
      }
      var id = this._nextId++;
      frame.id = id;
      var text = JSON.stringify(frame);  // throws (before anything is pending) on bad data
      var pending = {event: event, callback: callback, timer: null};
      var timeout = this._opts.ackTimeout;
      if (timeout && timeout > 0) {
        var self = this;
        pending.timer = setTimeout(function () {
          self._settle(id, new AckError('no acknowledgement within ' + timeout + ' ms',
                                        'timeout', event));
        }, timeout);
      }
      this._pending.set(id, pending);
      this._ws.send(text);
      return true;
    }

    _request(event, data, facility) {
      var self = this;
      return new Promise(function (resolve, reject) {
        self._emit(event, data, function (error, reply) {
          if (error) reject(error);
          else resolve(reply);
        }, facility);
      });
    }

    /** Settle the pending emit `id` (error or reply); unknown and late ids are ignored. */
    _settle(id, error, reply) {
      var pending = this._pending.get(id);
      if (!pending) return;
      this._pending.delete(id);
      clearTimeout(pending.timer);
      try {
        if (error) pending.callback(error);
        else pending.callback(null, reply);
      } catch (e) {
        report(e);
      }
    }

    _failPending(reason) {
      var ids = Array.from(this._pending.keys());
      for (var i = 0; i < ids.length; i++) {
        var pending = this._pending.get(ids[i]);
        if (pending) this._settle(ids[i], new AckError(reason, 'disconnected', pending.event));
      }
    }

    /** The URL with the positions to recover from, one recover=<channel>:<epoch>:<offset>
     *  per channel (docs/protocol.md, Recovery), as many as keep the query within
     *  maxQueryLength: the others are left out (their channels are told not recovered). */
    _dialed(uri) {
      this._asked = 0;
      this._unsent = null;
      if (typeof uri !== 'string') return uri;
      uri = this._withResume(uri);
      if (!this._opts.recover || !this._positions.size) return uri;
      var skip = this._skipPositions;
      var cap = this._opts.maxQueryLength;
      var length = queryLength(uri);
      var params = [];
      var unsent = {};
      var left = 0;
      this._positions.forEach(function (position, channel) {
        var param = 'recover=' + encodeURIComponent(
          channel + ':' + position.epoch + ':' + position.offset);
        if (skip || (cap > 0 && length + 1 + param.length > cap)) {
          unsent[channel] = skip ? skip.reason : QUERY_TOO_LONG;
          left++;
        } else {
          params.push(param);
          length += 1 + param.length;
        }
      });
      if (left) this._unsent = unsent;
      this._asked = params.length;
      if (!params.length) return uri;
      var hash = uri.indexOf('#');
      var tail = hash >= 0 ? uri.slice(hash) : '';
      var head = hash >= 0 ? uri.slice(0, hash) : uri;
      return head + (head.indexOf('?') >= 0 ? '&' : '?') + params.join('&') + tail;
    }

    /** The URL asking for a resume token (resume=), with the latest one the server sent
     *  when it fits within maxQueryLength; a token goes with one attempt only. */
    _withResume(uri) {
      if (!this._opts.resume) return uri;
      var token = this._resume;
      this._resume = null;
      var cap = this._opts.maxQueryLength;
      var length = queryLength(uri);
      if (token && cap > 0 && length + 1 + 'resume='.length
          + encodeURIComponent(token).length > cap) {
        token = null;
      }
      if (!token && cap > 0 && length + 1 + 'resume='.length > cap) return uri;
      return withParam(uri, 'resume', token || '');
    }

    _onConnecting(info) { this._fire('connecting', info); }

    _onConnected(info) {
      var skip = this._skipPositions;
      if (skip && skip.once) this._skipPositions = null;  // until a socket opens
      if (this._asked || this._unsent) this._expectVerdict();
      else this._noVerdict();
      this._fire('connected', info);
      if (this._unsent && !this._asked && this._ws) {
        // No position went: no verdict comes from the server; the page is told here.
        this._judged(this._verdict(null));
      }
      var ws = this._ws;
      var subscriptions = this._subscriptions.slice();
      for (var i = 0; i < subscriptions.length && this._ws === ws && this._subscribable(); i++) {
        if (subscriptions[i]._state === 'subscribing') this._subscribeNow(subscriptions[i]);
      }
    }

    /** The server's verdict (null: none), with the channels whose positions were left out
     *  of the URL as not recovered. */
    _verdict(server) {
      var unsent = this._unsent;
      this._unsent = null;
      if (!unsent) return server;
      var channels = Object.assign({}, server && server.channels);
      var reason = server && server.recovered === false ? server.reason : null;
      Object.keys(unsent).forEach(function (channel) {
        channels[channel] = {recovered: false, reason: unsent[channel]};
        if (!reason) reason = unsent[channel];
      });
      return {recovered: false, reason: reason, channels: channels};
    }

    /** A refused URL with recovery positions is dialed at once without them (until a
     *  socket opens; for good after a 414: the server's query cap is below
     *  maxQueryLength); one without them stops the client with 'refused'. */
    _refused(uri, verdict) {
      if (!this._asked || this._stopped) {
        super._refused(uri, verdict);
        return;
      }
      var tooLong = verdict.status === 414;
      this._skipPositions = {reason: tooLong ? QUERY_TOO_LONG : REFUSED, once: !tooLong};
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      var ws = this._ws;
      if (ws) {
        this._ws = null;
        this._abandon(ws, 1000, '');
      }
      this._closedEarly = 0;
      this._connect();
    }

    _onRefused(verdict) { this._fire('refused', verdict); }

    _onTransport(info) { this._fire('transport', info); }

    _onFrame(data) {
      var envelope = parseEnvelope(data);
      if (envelope !== null && envelope.ws4tx === 'pub') {
        // A message of a channel, for the subscription that has the channel (else the
        // client's own; nothing of a channel left), its payload delivered as if it had
        // come alone (an application event, or a raw message). With a position (a channel
        // with history): one at or before the channel's position (of the same epoch) was
        // delivered already and is dropped, else its position is remembered. Without (a
        // channel without history, or a stored message): delivered.
        var target = this._byChannel.get(envelope.channel) || this;
        if (target === LEFT) return;
        var binaryType = this._opts.binaryType;
        var run = function () { target._payload(envelope, binaryType); };
        target._take(envelope.offset === undefined ? {run: run}
          : {channel: envelope.channel, epoch: envelope.epoch, offset: envelope.offset,
             run: run});
        return;
      }
      if (envelope !== null && ANSWERS.indexOf(envelope.ws4tx) >= 0) {
        var answer = this._answers.get(envelope.id);
        if (answer) {
          this._answers.delete(envelope.id);
          answer(envelope);
        }
        return;
      }
      if (envelope === null) {
        this._unattributed('message', data);
      } else if (envelope.ws4tx === 'event') {
        var name = envelope.event;
        var payload = envelope.data === undefined ? null : envelope.data;
        if (typeof envelope.facility === 'string') {
          this._ofFacility(envelope.facility, name, payload);
        } else if (name === 'ws4tx.positions') {
          this._positionsEvent(payload);
        } else if (name === 'ws4tx.recovered') {
          this._recoveredEvent(payload);
        } else if (name === 'ws4tx.session' || name === 'ws4tx.refresh') {
          if (name === 'ws4tx.session' && payload && typeof payload.resume === 'string') {
            this._resume = payload.resume;
          }
          this._fire(name, payload);
          if (name === 'ws4tx.refresh') this._refresh();
        } else if (name.slice(0, RESERVED.length) === RESERVED) {
          // The server's word on the connection: the client's and every subscription's.
          this._fire(name, payload);
          this._subscriptions.slice().forEach(function (s) { s._fire(name, payload); });
        } else {
          this._unattributed(name, payload);
        }
      } else if (envelope.error !== undefined && envelope.error !== null) {
        var pending = this._pending.get(envelope.id);
        this._settle(envelope.id, new AckError(String(envelope.error), 'error',
                                               pending && pending.event));
      } else {
        this._settle(envelope.id, null, envelope.data === undefined ? null : envelope.data);
      }
    }

    /** A frame that names no channel nor facility (an event or raw message of the URL's
     *  facility, its stored replay): the client's (a subscription's frames all name their
     *  channel or facility). */
    _unattributed(event, data) {
      var self = this;
      this._take({run: function () { self._fire(event, data); }});
    }

    /** An event that names its facility (docs/protocol.md, Frames that name their
     *  facility): the subscriptions of that facility's alone (none left: dropped). */
    _ofFacility(facility, event, data) {
      this._subscriptions.filter(function (s) {
        return s.facility === facility && s._state === 'subscribed';
      }).forEach(function (target) {
        if (event.slice(0, RESERVED.length) === RESERVED) target._fire(event, data);
        else target._take({run: function () { target._fire(event, data); }});
      });
    }

    /** `channels` ({channel: value}) by who has them: Map(scope -> {channel: value}). */
    _split(channels) {
      var parts = new Map();
      var self = this;
      if (!channels || typeof channels !== 'object') return parts;
      Object.keys(channels).forEach(function (channel) {
        var target = self._byChannel.get(channel) || self;
        if (target === LEFT) return;
        if (!parts.has(target)) parts.set(target, {});
        parts.get(target)[channel] = channels[channel];
      });
      return parts;
    }

    _positionsEvent(payload) {
      this._split(payload && payload.channels).forEach(function (channels, target) {
        target._learn({channels: channels});
        target._fire('ws4tx.positions', {channels: channels});
      });
    }

    /** 'ws4tx.recovered': each scope (the client, a subscription) gets its channels'. */
    _recoveredEvent(payload) {
      var named = Object.keys((payload && payload.channels) || {}).length;
      var parts = this._split(payload && payload.channels);
      if (!parts.size && named) return;  // of channels left meanwhile
      if (!parts.size) {
        // It names no channel (no position asked was of the connection's): the verdict
        // of whoever awaits one.
        var waiting = this._subscriptions.filter(function (s) { return s._awaiting; });
        parts.set(this._awaiting || !waiting.length ? this : waiting[0], {});
      }
      var self = this;
      parts.forEach(function (channels, target) {
        var verdict = Object.keys(channels).length === named ? payload
          : partOf(payload, channels);
        target._fire('ws4tx.recovered', verdict);
        target._judged(target === self ? self._verdict(verdict) : verdict);
      });
    }

    /** The server asks for a fresh token: get one from the page's `token` function and
     *  send it; 'refreshed' fires once the server took it. Without the function nothing is
     *  sent: the server closes with 4002 when the token expires, and a reconnect follows. */
    _refresh() {
      var token = this._opts.token;
      if (typeof token !== 'function') return;
      var self = this;
      var ws = this._ws;
      Promise.resolve().then(function () { return token(); }).then(function (fresh) {
        if (self._ws !== ws) return undefined;  // that socket is gone: the next has its own
        return self.request('ws4tx.refresh', {token: String(fresh)}).then(function (reply) {
          self._fire('refreshed', reply);
        });
      }).catch(report);
    }

    _onDisconnected(info) {
      // The site closed the connection (4001, api.disconnect): the next one authenticates
      // anew, never on a resume token of before.
      if (info.code === 4001) this._resume = null;
      this._failPending('disconnected before the acknowledgement (code ' + info.code + ')');
      // Subscribe and unsubscribe answers will not come: the next connection subscribes
      // again (and an unsubscribe is then as good as answered).
      var answers = Array.from(this._answers.values());
      this._answers.clear();
      this._byChannel.clear();
      this._awaiting = false;
      answers.forEach(function (answer) { answer(null); });
      var subscriptions = this._subscriptions.slice();
      subscriptions.forEach(function (s) {
        s._dropped();
        if (!info.reconnect) s._end('unsubscribed');
      });
      this._fire('disconnected', info);
    }

    _onReconnecting(info) { this._fire('reconnecting', info); }
  }

  // The client is a Scope too (its URL's channels): the methods, not the class.
  Object.getOwnPropertyNames(Scope.prototype).forEach(function (name) {
    if (name !== 'constructor') {
      Object.defineProperty(WS4TX.prototype, name,
                            Object.getOwnPropertyDescriptor(Scope.prototype, name));
    }
  });

  WS4TX.SUBPROTOCOL = SUBPROTOCOL;
  WS4TX.FINAL_CODES = FINAL_CODES.slice();
  WS4TX.HEARTBEAT_TIMEOUT = HEARTBEAT_TIMEOUT;
  WS4TX.MAX_QUERY_LENGTH = MAX_QUERY_LENGTH;
  WS4TX.AckError = AckError;
  WS4TX.Subscription = Subscription;

  /** The connection of a WS4Redis: raw frames, the callbacks of ws4redis.js's options. */
  class RawConnection extends Connection {
    constructor(options) {
      var settings = Object.assign({}, options);
      settings.heartbeat = options.heartbeat_msg === undefined ? null : options.heartbeat_msg;
      super(options.uri, settings, [].concat(options.protocols || []).filter(function (p) {
        return p !== SUBPROTOCOL;  // a ws4redis client never speaks the envelope
      }));
      this._callbacks = options;
    }

    _call(name, arg) {
      var fn = this._callbacks[name];
      if (typeof fn !== 'function') return;
      try {
        if (arguments.length > 1) fn.call(this._callbacks, arg);
        else fn.call(this._callbacks);
      } catch (error) {
        report(error);
      }
    }

    _onConnecting() { this._call('connecting'); }

    _onConnected() { this._call('connected'); }

    _onFrame(data) { this._call('receive_message', data); }

    _onDisconnected(info, evt) {
      // ws4redis.js passed the CloseEvent; when the client dropped the socket itself
      // (close(), missed heartbeats) there is none: an object with the same fields.
      this._call('disconnected', evt || {type: 'close', code: info.code, reason: info.reason,
                                        wasClean: info.wasClean});
    }
  }

  /**
   * ws4redis.js's constructor: WS4Redis({uri, connecting, connected, disconnected,
   * receive_message, heartbeat_msg}), with or without `new`; a second argument (jQuery, for
   * ws4redis.js) is ignored. Connects at once.
   */
  function WS4Redis(options, ignored) {
    if (!(this instanceof WS4Redis)) return new WS4Redis(options, ignored);
    if (!options || !options.uri) throw new Error('WS4Redis: no WebSocket URI in options.uri');
    var connection = new RawConnection(options);
    this._connection = connection;
    this.send_message = function (message) { return connection.send(message); };
    this.close = function () { connection.close(); };
    this.get_state = function () { return connection.readyState; };
    this.is_connecting = function () { return connection.readyState === 0; };
    this.is_connected = function () { return connection.readyState === OPEN; };
    this.is_closing = function () { return connection.readyState === 2; };
    this.is_closed = function () { return connection.readyState === CLOSED; };
    connection._connect();
  }

  function connect(uri, options) {
    return new WS4TX(uri, options);
  }

  return {
    WS4TX: WS4TX,
    WS4Redis: WS4Redis,
    AckError: AckError,
    connect: connect,
    SUBPROTOCOL: SUBPROTOCOL,
  };
});
