// The npm package against a real ws4tx server (Redis and `twistd ws4tx`, see _server.mjs),
// through the package's own exports, with the `ws` package's WebSocket injected (Node 18
// and 20 have no global one), and with Node's built-in WebSocket where it has one.
import assert from 'node:assert/strict';
import {execFile} from 'node:child_process';
import {createRequire} from 'node:module';
import {after, afterEach, before, describe, test} from 'node:test';
import {promisify} from 'node:util';
import NodeWebSocket from 'ws';
import {AckError, connect, WS4Redis, WS4TX} from 'ws4tx';
import {next, Server, WAIT, within} from './_server.mjs';

/** Fast retries, so that a restart costs the tests little. */
const QUICK = {WebSocket: NodeWebSocket, minDelay: 50, maxDelay: 250};

let server;
let clients = [];

/** A WS4TX on `path` (facility and flags) of the server, closed after the test. */
function client(path, options = {}) {
  const made = new WS4TX(server.url + path, {...QUICK, ...options});
  clients.push(made);
  return made;
}

/** A client on `path` whose subscriptions are in place: it got `stored`, the message
 *  stored for its channel (published before it connected), replayed. */
async function subscribed(path, stored, options = {}) {
  const made = client(path, options);
  const replayed = next(made, 'message', (data) => data === stored);
  await replayed;
  return made;
}

before(async () => { server = await Server.start(); });
after(async () => { await server?.close(); });
afterEach(() => {
  for (const made of clients) made.close();
  clients = [];
});

describe('events and acknowledgements (a server-side handler)', () => {
  test('connects with the ws4tx.v1 subprotocol and gets the reply of a request', async () => {
    const echo = client('echo');
    assert.equal(echo.state, 'connecting');
    const {protocol} = await next(echo, 'connected');
    assert.equal(protocol, 'ws4tx.v1');
    assert.equal(echo.state, 'connected');
    assert.equal(echo.readyState, 1);
    assert.deepEqual(await within(echo.request('echo', {text: 'hi', n: [1, 2]}), 'reply'),
                     {text: 'hi', n: [1, 2]});
  });

  test('emit with a callback gets (null, reply)', async () => {
    const echo = client('echo');
    await next(echo, 'connected');
    const answer = new Promise((resolve) => {
      assert.equal(echo.emit('echo', 42, (error, reply) => resolve({error, reply})), true);
    });
    assert.deepEqual(await within(answer, 'acknowledgement'), {error: null, reply: 42});
  });

  test("a refused event rejects with the handler's message as an AckError", async () => {
    const echo = client('echo');
    await next(echo, 'connected');
    await assert.rejects(within(echo.request('refuse', 'x'), 'refusal'), (error) => {
      assert.ok(error instanceof AckError);
      assert.ok(error instanceof WS4TX.AckError);
      assert.equal(error.code, 'error');
      assert.equal(error.message, 'refused: x');
      assert.equal(error.event, 'refuse');
      return true;
    });
  });

  test('a refused event without an acknowledgement comes back as ws4tx.error', async () => {
    const echo = client('echo');
    await next(echo, 'connected');
    const error = next(echo, 'ws4tx.error');
    assert.equal(echo.emit('refuse', 'y'), true);
    assert.deepEqual(await error, {message: 'refused: y'});
  });

  test("a handler's broadcast reaches the other clients as an event", async () => {
    await server.publish('echo', 'stored echo');
    const alice = await subscribed('echo?subscribe-broadcast', 'stored echo');
    const bob = await subscribed('echo?subscribe-broadcast', 'stored echo');
    const heard = next(bob, 'shouted');
    assert.deepEqual(await within(alice.request('shout', {from: 'alice'}), 'ack'),
                     {shouted: true});
    assert.deepEqual(await heard, {from: 'alice'});
  });

  test('request() while not connected rejects with not-connected', async () => {
    const echo = client('echo');
    await assert.rejects(echo.request('echo', 1), {name: 'AckError', code: 'not-connected'});
  });
});

describe('messages the Django side publishes (ws4tx.api)', () => {
  test('events and raw messages arrive as published', async () => {
    await server.publish('news', 'stored news');
    const news = await subscribed('news?subscribe-broadcast', 'stored news');
    const headline = next(news, 'headline');
    await server.emit('news', 'headline', {title: 'ws4tx on npm', n: 1});
    assert.deepEqual(await headline, {title: 'ws4tx on npm', n: 1});
    const raw = next(news, 'message');
    await server.publish('news', 'plain text, no envelope');
    assert.equal(await raw, 'plain text, no envelope');
  });

  test('binary messages of a facility with history arrive as ArrayBuffer', async () => {
    await server.publish('chat-binary', 'stored');
    const chat = await subscribed('chat-binary?subscribe-broadcast', 'stored',
                                  {binaryType: 'arraybuffer'});
    const received = next(chat, 'message', (data) => typeof data !== 'string');
    await server.publish('chat-binary', Uint8Array.from([0, 1, 2, 255]));
    const data = await received;
    assert.ok(data instanceof ArrayBuffer);
    assert.deepEqual([...new Uint8Array(data)], [0, 1, 2, 255]);
    assert.equal(chat.positions['ws4tx:broadcast:chat-binary'].offset, 2);
  });
});

describe('recovery across a server restart (a facility with history)', () => {
  test('the messages published while the server was down arrive once, in order, then recovered', async () => {
    const channel = 'ws4tx:broadcast:chat';
    await server.publish('chat', 'm0');
    const chat = await subscribed('chat?subscribe-broadcast', 'm0');
    // The stored replay carries no position: the server tells where the channel stands
    // (ws4tx.positions: m0 is its offset 1), so even a client that got nothing live
    // recovers after a reconnect.
    if (!chat.positions[channel]) await next(chat, 'ws4tx.positions');
    assert.equal(chat.positions[channel].offset, 1);
    const live = next(chat, 'message', (data) => data === 'm1');
    await server.publish('chat', 'm1');
    await live;
    const {epoch, offset} = chat.positions[channel];
    assert.match(epoch, /^[0-9a-f]{16}$/);
    assert.equal(offset, 2);

    const dropped = next(chat, 'disconnected');
    await server.stop();
    const info = await dropped;
    assert.equal(info.code, 1001);
    assert.equal(info.reconnect, true);

    await server.publish('chat', 'm2');
    await server.publish('chat', 'm3');
    const messages = [];
    chat.on('message', (data) => messages.push(data));
    const recovered = next(chat, 'recovered');
    const serverEvent = next(chat, 'ws4tx.recovered');
    await server.start();
    const result = await recovered;

    assert.deepEqual(result, {recovered: true, channels: {[channel]: {recovered: true, messages: 2}}});
    assert.deepEqual(await serverEvent, result);
    assert.deepEqual(messages, ['m2', 'm3']);
    assert.deepEqual(chat.positions, {[channel]: {epoch, offset: 4}});
    assert.equal(chat.state, 'connected');
  });
});

describe('the ws4redis.js API (raw payloads)', () => {
  test('WS4Redis receives what is published and closes', async () => {
    await server.publish('legacy', 'stored legacy');
    const received = [];
    let connected = false;
    const closed = new Promise((resolve) => {
      const legacy = WS4Redis({
        uri: server.url + 'legacy?subscribe-broadcast',
        WebSocket: NodeWebSocket,
        connected() { connected = true; },
        receive_message(message) {
          received.push(message);
          if (message === 'stored legacy') {
            assert.equal(legacy.is_connected(), true);
            server.emit('legacy', 'ping', {n: 1});
          } else {
            legacy.close();
          }
        },
        disconnected(evt) { resolve({evt, closed: legacy.is_closed()}); },
      });
    });
    const {evt, closed: isClosed} = await within(closed, 'close');
    assert.equal(connected, true);
    // A raw client gets an event as the JSON text of its envelope.
    assert.deepEqual(received.map((m) => m.startsWith('{') ? JSON.parse(m) : m),
                     ['stored legacy', {ws4tx: 'event', event: 'ping', data: {n: 1}}]);
    assert.equal(evt.code, 1000);
    assert.equal(isClosed, true);
  });
});

describe('the client itself', () => {
  test('close() says disconnected without a reconnect, and the state is closed', async () => {
    const echo = client('echo');
    await next(echo, 'connected');
    const disconnected = next(echo, 'disconnected');
    echo.close();
    assert.deepEqual(await disconnected,
                     {code: 1000, reason: '', wasClean: true, reconnect: false});
    assert.equal(echo.state, 'closed');
    assert.equal(echo.emit('echo', 1), false);
  });

  test('close() while the socket is still connecting', async () => {
    // The `ws` package reports the aborted handshake as an error event, then closes: a
    // socket without an error handler throws that error, uncaught.
    const sockets = [];
    class Recorded extends NodeWebSocket {
      constructor(...args) { super(...args); sockets.push(this); }
    }
    const echo = client('echo', {WebSocket: Recorded});
    await next(echo, 'connecting');
    await within(new Promise((resolve) => queueMicrotask(resolve)), 'socket');
    assert.equal(sockets.length, 1);
    assert.equal(echo.readyState, 0);
    const socketClosed = within(new Promise((resolve) => sockets[0].once('close', resolve)),
                                'close of the aborted socket');
    const disconnected = next(echo, 'disconnected');
    echo.close();
    assert.equal((await disconnected).reconnect, false);
    await socketClosed;
  });

  test('connect() accepts a function of the URL, called before every attempt', async () => {
    let calls = 0;
    const echo = connect(async () => { calls++; return server.url + 'echo'; }, QUICK);
    clients.push(echo);
    await next(echo, 'connected');
    assert.equal(calls, 1);
    assert.equal(await within(echo.request('echo', 'via a function'), 'reply'), 'via a function');
  });

  test('require() gives the same API (the CommonJS build)', async () => {
    const required = createRequire(import.meta.url)('ws4tx');
    assert.deepEqual(Object.keys(required).sort(),
                     ['AckError', 'SUBPROTOCOL', 'WS4Redis', 'WS4TX', 'connect']);
    const echo = new required.WS4TX(server.url + 'echo', QUICK);
    clients.push(echo);
    await next(echo, 'connected');
    assert.equal(await within(echo.request('echo', 'cjs'), 'reply'), 'cjs');
  });

  test("Node's built-in WebSocket, found as the global one", async (t) => {
    // A child Node: Node 20 has it behind --experimental-websocket, Node 22 by default.
    const flags = process.allowedNodeEnvironmentFlags.has('--experimental-websocket')
      ? ['--experimental-websocket'] : [];
    const script = `
      import {WS4TX} from 'ws4tx';
      if (typeof WebSocket !== 'function') { console.log('{"missing":true}'); process.exit(); }
      const c = new WS4TX(process.argv[1] + 'echo');
      c.once('connected', async ({protocol}) => {
        const reply = await c.request('echo', {built: 'in'});
        c.close();
        console.log(JSON.stringify({protocol, reply}));
      });`;
    const {stdout} = await promisify(execFile)(
      process.execPath, [...flags, '--input-type=module', '-e', script, server.url],
      {cwd: new URL('..', import.meta.url), timeout: WAIT});
    const result = JSON.parse(stdout.trim().split('\n').pop());
    if (result.missing) {
      t.skip(`Node ${process.version} has no built-in WebSocket`);
      return;
    }
    assert.deepEqual(result, {protocol: 'ws4tx.v1', reply: {built: 'in'}});
  });
});
