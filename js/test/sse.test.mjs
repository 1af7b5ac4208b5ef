// The fallback to Server-Sent Events against a real ws4tx server (Redis and `twistd
// ws4tx`, see _server.mjs), behind a small proxy of Node's own that strips Upgrade as some
// proxies do (the WebSocket handshake reaches ws4tx as a plain GET and is not answered 101),
// and that can be told to pass WebSockets again.
import assert from 'node:assert/strict';
import {createServer, request} from 'node:http';
import {connect as tcp} from 'node:net';
import {after, afterEach, before, describe, test} from 'node:test';
import NodeWebSocket from 'ws';
import {AckError, WS4TX} from 'ws4tx';
import {next, Server, within} from './_server.mjs';

const QUICK = {WebSocket: NodeWebSocket, minDelay: 50, maxDelay: 250};

/** An HTTP proxy to `target` (http://host:port) that strips Upgrade while `strip`
 *  (forwarding the handshake as a plain GET, whose answer is not 101), else passes it.
 *  `streams` has the Last-Event-ID of each event stream it forwarded. */
class Proxy {
  constructor(target) {
    this.target = new URL(target);
    this.strip = true;
    this.streams = [];
    this.posts = 0;
    this.sockets = new Set();
    this.server = createServer((req, res) => this._forward(req, res));
    this.server.on('upgrade', (req, socket, head) => this._upgrade(req, socket, head));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => {
      this.url = `ws://127.0.0.1:${this.server.address().port}/ws/`;
      resolve(this);
    }));
  }

  _forward(req, res, stripped = false) {
    const headers = {...req.headers};
    delete headers.upgrade;
    delete headers.connection;
    if (String(headers.accept || '').includes('text/event-stream')) {
      this.streams.push(headers['last-event-id'] || null);
    }
    if (req.method === 'POST') this.posts++;
    const upstream = request({host: this.target.hostname, port: this.target.port,
                              method: req.method, path: req.url, headers}, (answer) => {
      if (stripped) {
        // The handshake's answer, on the raw socket: anything but 101 fails the WebSocket.
        res.end(`HTTP/1.1 ${answer.statusCode} ${answer.statusMessage}\r\n`
                + 'Connection: close\r\n\r\n');
        answer.resume();
        return;
      }
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => (stripped ? res.destroy() : res.destroy()));
    req.pipe(upstream);
  }

  _upgrade(req, socket, head) {
    if (this.strip) {
      this._forward(req, socket, true);
      return;
    }
    const upstream = tcp(this.target.port, this.target.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      }
      upstream.write(lines.join('\r\n') + '\r\n\r\n');
      upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
  }

  /** Drop every connection through it (a proxy restarted). */
  drop() {
    for (const socket of this.sockets) socket.destroy();
  }

  close() {
    this.drop();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

let server;
let proxy;
let clients = [];

function client(path, options = {}) {
  const made = new WS4TX(proxy.url + path, {...QUICK, ...options});
  clients.push(made);
  return made;
}

/** A client of `path` that fell back to SSE: its 'transport' event came. */
async function onSse(path, options = {}) {
  const made = client(path, options);
  const changed = await next(made, 'transport');
  assert.deepEqual(changed, {transport: 'sse', previous: 'websocket'});
  assert.equal(made.transport, 'sse');
  return made;
}

before(async () => {
  server = await Server.start();
  proxy = await new Proxy(server.url.replace(/^ws:/, 'http:')).listen();
});
after(async () => {
  await proxy?.close();
  await server?.close();
});
afterEach(() => {
  for (const made of clients) made.close();
  clients = [];
  proxy.strip = true;
});

describe('falling back to SSE when the WebSocket cannot open', () => {
  test('two WebSockets that do not open: the same URL as an event stream', async () => {
    const made = client('chat-sse-1?subscribe-broadcast', {retryWebSocket: null});
    assert.equal(made.transport, 'websocket');
    const closes = [];
    made.on('disconnected', (info) => closes.push(info.code));
    const connected = await next(made, 'connected');
    assert.deepEqual(connected, {protocol: 'ws4tx.v1'});
    assert.equal(made.transport, 'sse');
    // The handshakes the proxy answered with a 400: two, then the probe of the URL saw it
    // answered over HTTP.
    assert.ok(closes.length >= 2 && closes.every((code) => code === 1006), String(closes));
    const got = next(made, 'message');
    await server.publish('chat-sse-1', 'over the stream');
    assert.equal(await got, 'over the stream');
    assert.deepEqual(Object.keys(made.positions), ['ws4tx:broadcast:chat-sse-1']);
  });

  test('requests go by POST, with their acknowledgement or refusal', async () => {
    const echo = await onSse('echo?subscribe-broadcast');
    assert.equal(echo.state, 'connected');  // 'transport' comes just before 'connected'
    const posts = proxy.posts;
    assert.deepEqual(await within(echo.request('echo', {text: 'hi'}), 'reply'), {text: 'hi'});
    await assert.rejects(echo.request('refuse', 'no'), (error) => {
      assert.ok(error instanceof AckError);
      assert.equal(error.code, 'error');
      assert.equal(error.message, 'refused: no');
      return true;
    });
    // A handler's emit to everybody comes back on the stream, after the ack of the POST.
    const shouted = next(echo, 'shouted');
    assert.deepEqual(await echo.request('shout', 'loud'), {shouted: true});
    assert.equal(await shouted, 'loud');
    assert.equal(proxy.posts - posts, 3);
  });

  test('a stream that drops resumes by Last-Event-ID: each message once, in order', async () => {
    const made = await onSse('chat-sse-2?subscribe-broadcast');
    const got = [];
    made.on('message', (data) => got.push(data));
    const first = next(made, 'message');
    await server.publish('chat-sse-2', 'm0');
    await first;
    const recovered = next(made, 'recovered');
    await server.stop();  // the stream ends; the server's next one has what was missed
    await server.publishAll('chat-sse-2', ['m1', 'm2', 'm3']);
    await server.start();
    const verdict = await recovered;
    assert.equal(verdict.recovered, true);
    const streams = proxy.streams.filter((id) => id !== null);
    assert.ok(streams.length >= 1, 'the stream after the restart sent Last-Event-ID');
    assert.match(streams.at(-1), /^[\w-]{6}\.[\w-]+:1$/);  // the position of m0
    await server.publish('chat-sse-2', 'm4');
    await within(new Promise((resolve) => {
      const check = () => (got.length >= 5 ? resolve() : setTimeout(check, 10));
      check();
    }), 'm4');
    assert.deepEqual(got, ['m0', 'm1', 'm2', 'm3', 'm4']);
    assert.equal(made.transport, 'sse');
  });

  test('the WebSocket is tried again later; subscriptions wait for it', async () => {
    const made = await onSse('chat-sse-3?subscribe-broadcast', {retryWebSocket: 100});
    const notes = made.subscribe('chat-sse-notes');
    assert.equal(notes.state, 'subscribing');  // a subscribe cannot go by POST
    const got = [];
    made.on('message', (data) => got.push(data));
    const first = next(made, 'message');
    await server.publish('chat-sse-3', 'a');
    await first;
    // Still stripped: the tries of the WebSocket fail and SSE goes on.
    await next(made, 'disconnected', (info) => info.reason === 'trying the WebSocket again');
    await next(made, 'connected');
    assert.equal(made.transport, 'sse');
    assert.equal(notes.state, 'subscribing');
    proxy.strip = false;
    const back = await next(made, 'transport');
    assert.deepEqual(back, {transport: 'websocket', previous: 'sse'});
    assert.deepEqual(await next(notes, 'subscribed'),
                     {channels: ['ws4tx:broadcast:chat-sse-notes']});
    const noted = next(notes, 'message');
    await server.publish('chat-sse-notes', 'noted');
    assert.equal(await noted, 'noted');
    const last = next(made, 'message', (data) => data === 'b');
    await server.publish('chat-sse-3', 'b');
    await last;
    assert.deepEqual(got, ['a', 'b']);
  });

  test('a server that is down is not a reason for SSE: back on the WebSocket', async () => {
    proxy.strip = false;
    const made = client('chat-sse-5?subscribe-broadcast');
    await next(made, 'connected');
    assert.equal(made.transport, 'websocket');
    await server.stop();
    // Connections refused: the probe gets no answer either.
    for (let i = 0; i < 4; i++) await next(made, 'disconnected');
    // Listened for before the start: the server takes WebSockets as soon as it listens,
    // before start() resolves (which waits for its Redis subscriber too).
    const back = next(made, 'connected');
    await server.start();
    await back;
    assert.equal(made.transport, 'websocket');
  });

  test('sse: false keeps dialing the WebSocket', async () => {
    const made = client('chat-sse-4?subscribe-broadcast', {sse: false});
    for (let i = 0; i < 3; i++) await next(made, 'reconnecting');
    assert.equal(made.transport, 'websocket');
    assert.equal(made.state, 'reconnecting');
  });
});
