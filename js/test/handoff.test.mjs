// The page-to-live handoff (issue 24) against a real ws4tx server: a page rendered with
// where its channel stood ({% ws4tx_position %}, here the same api.position) connects
// later; what was published in between arrives once, and when the history no longer has
// it the page's getState() runs once before any live message is applied.
import assert from 'node:assert/strict';
import {after, afterEach, before, describe, test} from 'node:test';
import NodeWebSocket from 'ws';
import {WS4TX} from 'ws4tx';
import {next, Server, within} from './_server.mjs';

/** The test server's history keeps 100 messages a channel (ws4tx_server.py). */
const HISTORY_SIZE = 100;

let server;
let clients = [];
/** Text frames as they reach the sockets, before ws4tx.js reads them, and who waits. */
let arrived = [];
let waiting = [];

/** A WebSocket that notes each frame as it arrives (its listener runs before ws4tx.js's
 *  onmessage, in the same dispatch). */
class Watched extends NodeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    this.on('message', (data, isBinary) => {
      if (isBinary) return;
      arrived.push(String(data));
      waiting = waiting.filter(({match, resolve}) => !(match(String(data)) && resolve() === undefined));
    });
  }
}

/** Resolves once a frame holding `text` reached a socket (and ws4tx.js has read it). */
function reached(text) {
  const match = (frame) => frame.includes(JSON.stringify(text));
  if (arrived.some(match)) return Promise.resolve();
  return within(new Promise((resolve) => waiting.push({match, resolve})), `frame ${text}`);
}

function client(path, options) {
  const made = new WS4TX(server.url + path, {WebSocket: Watched, minDelay: 50, maxDelay: 250,
                                             ...options});
  clients.push(made);
  return made;
}

/** A getState the test settles: `calls` counts its calls, `settle(value)` resolves the
 *  Promise it returned. */
function pendingState() {
  const state = {calls: 0, self: null};
  state.promise = new Promise((resolve) => { state.settle = resolve; });
  state.getState = function () {
    state.calls++;
    state.self = this;
    return state.promise;
  };
  return state;
}

before(async () => { server = await Server.start(); });
after(async () => { await server?.close(); });
afterEach(() => {
  for (const made of clients) made.close();
  clients = [];
  arrived = [];
  waiting = [];
});

describe('positions rendered with the page', () => {
  test('what was published between the render and the connect arrives exactly once', async () => {
    await server.publishAll('chat-render', ['before 1', 'before 2']);
    const rendered = await server.position('chat-render');
    const channel = 'ws4tx:broadcast:chat-render';
    assert.equal(rendered[channel].offset, 2);
    await server.publishAll('chat-render', ['between 1', 'between 2', 'between 3']);
    const state = pendingState();
    const page = client('chat-render?subscribe-broadcast', {positions: rendered,
                                                            getState: state.getState});
    const got = [];
    page.on('message', (m) => got.push(m));
    const verdict = await next(page, 'recovered');
    assert.deepEqual(verdict, {recovered: true, channels: {[channel]: {recovered: true, messages: 3}}});
    const live = next(page, 'message', (m) => m === 'live');
    await server.publish('chat-render', 'live');
    await live;
    assert.deepEqual(got, ['between 1', 'between 2', 'between 3', 'live']);
    assert.equal(state.calls, 0);
    assert.equal(page.positions[channel].offset, 6);
  });

  test('past the history window getState runs once, and no live message is applied before it settles', async () => {
    const rendered = await server.position('chat-window');
    const channel = 'ws4tx:broadcast:chat-window';
    const {epoch, offset} = rendered[channel];
    const missed = Array.from({length: HISTORY_SIZE + 5}, (_, i) => `missed ${i}`);
    await server.publishAll('chat-window', missed);
    const state = pendingState();
    const page = client('chat-window?subscribe-broadcast', {positions: rendered,
                                                            getState: state.getState});
    const got = [];
    page.on('message', (m) => got.push(m));
    const verdict = await next(page, 'recovered');
    assert.deepEqual([verdict.recovered, verdict.reason], [false, 'trimmed']);
    await server.publishAll('chat-window', ['live 1', 'live 2', 'live 3']);
    await reached('live 3');
    assert.deepEqual(got, []);
    assert.equal(state.calls, 1);
    assert.equal(state.self, page);
    // The state the page fetched already has 'live 1' (its position says so).
    const live1 = offset + missed.length + 1;
    const released = next(page, 'message', (m) => m === 'live 3');
    state.settle({positions: {[channel]: {epoch, offset: live1}}});
    await released;
    assert.deepEqual(got, ['live 2', 'live 3']);
    assert.equal(state.calls, 1);
    const live4 = next(page, 'message', (m) => m === 'live 4');
    await server.publish('chat-window', 'live 4');
    await live4;
    assert.deepEqual(got, ['live 2', 'live 3', 'live 4']);
    assert.equal(state.calls, 1);
  });

  test('a subscription hands off the same way, from the subscribe frame', async () => {
    const rendered = await server.position('chat-sub-window');
    const channel = 'ws4tx:broadcast:chat-sub-window';
    await server.publishAll('chat-sub-window',
                            Array.from({length: HISTORY_SIZE + 1}, (_, i) => `missed ${i}`));
    const state = pendingState();
    const c = client('', {});
    const sub = c.subscribe('chat-sub-window', {positions: rendered, getState: state.getState});
    const got = [];
    sub.on('message', (m) => got.push(m));
    const verdict = await next(sub, 'recovered');
    assert.deepEqual([verdict.recovered, verdict.reason], [false, 'trimmed']);
    assert.deepEqual(Object.keys(verdict.channels), [channel]);
    await server.publish('chat-sub-window', 'live');
    await reached('live');
    assert.deepEqual(got, []);
    assert.equal(state.calls, 1);
    assert.equal(state.self, sub);
    const released = next(sub, 'message', (m) => m === 'live');
    state.settle(undefined);
    await released;
    assert.deepEqual(got, ['live']);
  });

  test('within the window a subscription recovers from the rendered position', async () => {
    await server.publish('chat-sub-render', 'before');
    const rendered = await server.position('chat-sub-render');
    await server.publishAll('chat-sub-render', ['between 1', 'between 2']);
    const state = pendingState();
    const c = client('', {});
    // Positions of other channels (another facility's, rendered on the same page) are
    // ignored by the server and forgotten by the subscription.
    const positions = {...rendered, 'ws4tx:broadcast:elsewhere': {epoch: '0123456789abcdef', offset: 3}};
    const sub = c.subscribe('chat-sub-render', {positions, getState: state.getState});
    const got = [];
    sub.on('message', (m) => got.push(m));
    const verdict = await next(sub, 'recovered');
    assert.equal(verdict.recovered, true);
    assert.deepEqual(got, ['between 1', 'between 2']);
    assert.deepEqual(Object.keys(sub.positions), ['ws4tx:broadcast:chat-sub-render']);
    assert.equal(state.calls, 0);
  });
});
