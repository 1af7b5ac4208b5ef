// Subscriptions on one connection (client.subscribe) and the page-to-live handoff
// (positions, getState), against a real ws4tx server (Redis and `twistd ws4tx`, see
// _server.mjs): the client opens the bare WebSocket URL and subscribes by frames.
import assert from 'node:assert/strict';
import {after, afterEach, before, describe, test} from 'node:test';
import NodeWebSocket from 'ws';
import {WS4TX} from 'ws4tx';
import {next, Server, within} from './_server.mjs';

let server;
let clients = [];
/** Every URL dialed and every frame sent, by the clients of the current test. */
let dialed = [];
let sent = [];

/** A WebSocket that records what the client dials and sends. */
class Recorded extends NodeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    dialed.push(url);
  }

  send(data) {
    sent.push(data);
    super.send(data);
  }
}

const QUICK = {WebSocket: Recorded, minDelay: 50, maxDelay: 250};

function client(path = '', options = {}) {
  const made = new WS4TX(server.url + path, {...QUICK, ...options});
  clients.push(made);
  return made;
}

/** The subscribe frames sent so far, parsed. */
function subscribeFrames() {
  return sent.filter((f) => typeof f === 'string' && f.startsWith('{"ws4tx":"subscribe"'))
    .map((f) => JSON.parse(f));
}

/** What `subscription` receives: its events of `names`, as [name, data]. */
function record(subscription, ...names) {
  const got = [];
  for (const name of names) subscription.on(name, (data) => got.push([name, data]));
  return got;
}

/** Resolves once `predicate()` holds, checked after each event of `emitter`'s `event`. */
function until(emitter, event, predicate) {
  if (predicate()) return Promise.resolve();
  return within(new Promise((resolve) => {
    const check = () => {
      if (!predicate()) return;
      emitter.off(event, check);
      resolve();
    };
    emitter.on(event, check);
  }), `${event} until ${predicate}`);
}

before(async () => { server = await Server.start(); });
after(async () => { await server?.close(); });
afterEach(() => {
  for (const made of clients) made.close();
  clients = [];
  dialed = [];
  sent = [];
});

describe('subscriptions on the bare URL', () => {
  test('each subscription gets its own channels, and its own state and positions', async () => {
    const c = client();
    const a = c.subscribe('chat-sub-a');
    const b = c.subscribe('chat-sub-b', {audiences: ['broadcast']});
    const news = c.subscribe('news-sub');
    assert.deepEqual([a.state, b.state, news.state], ['subscribing', 'subscribing', 'subscribing']);
    const gotA = record(a, 'message', 'headline');
    const gotB = record(b, 'message', 'headline');
    const gotNews = record(news, 'message', 'headline');
    // A facility with history tells where its channels stand, before live messages.
    const positioned = Promise.all([next(a, 'ws4tx.positions'), next(b, 'ws4tx.positions')]);
    await Promise.all([next(a, 'subscribed'), next(b, 'subscribed'), next(news, 'subscribed')]);
    assert.deepEqual([a.state, b.state, news.state], ['subscribed', 'subscribed', 'subscribed']);
    assert.deepEqual(a.channels, ['ws4tx:broadcast:chat-sub-a']);
    assert.deepEqual(c.subscriptions, [a, b, news]);
    await positioned;

    await server.publish('chat-sub-a', 'to a');
    await server.emit('chat-sub-b', 'headline', {to: 'b'});
    await server.publish('news-sub', 'to news');
    await until(news, 'message', () => gotNews.length === 1);
    await until(b, 'headline', () => gotB.length === 1);
    await until(a, 'message', () => gotA.length === 1);
    assert.deepEqual(gotA, [['message', 'to a']]);
    assert.deepEqual(gotB, [['headline', {to: 'b'}]]);
    assert.deepEqual(gotNews, [['message', 'to news']]);
    assert.equal(a.positions['ws4tx:broadcast:chat-sub-a'].offset, 1);
    assert.deepEqual(Object.keys(b.positions), ['ws4tx:broadcast:chat-sub-b']);
    assert.deepEqual(c.positions, {});
  });

  test('a refused subscribe leaves the others as they are', async () => {
    const c = client();
    const kept = c.subscribe('chat-kept');
    // An anonymous connection has no user channel.
    const refused = c.subscribe('chat-kept-user', {audiences: ['user']});
    const why = await next(refused, 'refused');
    assert.deepEqual(why, {reason: 'not allowed: the user audience of chat-kept-user'});
    assert.equal(refused.state, 'refused');
    if (kept.state !== 'subscribed') await next(kept, 'subscribed');
    assert.deepEqual(c.subscriptions, [kept]);
    const got = next(kept, 'message');
    await server.publish('chat-kept', 'still here');
    assert.equal(await got, 'still here');
    assert.equal(c.state, 'connected');
  });

  test('unsubscribe() stops its messages; the others go on', async () => {
    const c = client();
    const gone = c.subscribe('chat-gone');
    const stays = c.subscribe('chat-stays');
    await Promise.all([next(gone, 'subscribed'), next(stays, 'subscribed')]);
    const got = record(gone, 'message');
    const answer = await within(gone.unsubscribe(), 'unsubscribed');
    assert.deepEqual(answer, {ws4tx: 'unsubscribed', id: answer.id, facility: 'chat-gone',
                              channels: ['ws4tx:broadcast:chat-gone']});
    assert.equal(gone.state, 'unsubscribed');
    assert.deepEqual(c.subscriptions, [stays]);
    await server.publish('chat-gone', 'after');
    const later = next(stays, 'message');
    await server.publish('chat-stays', 'later');
    assert.equal(await later, 'later');
    assert.deepEqual(got, []);
  });

  test("a stored replay goes to its subscription alone, not to the client or another", async () => {
    await server.publish('chat-replay', 'stored');
    const c = client();
    const gotClient = [];
    c.on('message', (m) => gotClient.push(m));
    const news = c.subscribe('news-replay');
    const gotNews = record(news, 'message');
    await next(news, 'subscribed');
    // A position of another epoch: not recovered, so the server replays the stored one.
    const chat = c.subscribe('chat-replay', {positions: {
      'ws4tx:broadcast:chat-replay': {epoch: '0000000000000000', offset: 1}}});
    const gotChat = record(chat, 'message');
    const verdict = await next(chat, 'recovered');
    assert.deepEqual([verdict.recovered, verdict.reason], [false, 'epoch']);
    assert.deepEqual(gotChat, [['message', 'stored']]);
    const live = next(news, 'message');
    await server.publish('news-replay', 'news live');
    assert.equal(await live, 'news live');
    assert.deepEqual(gotNews, [['message', 'news live']]);
    // A raw message of a channel without history names its channel too: its
    // subscription's alone.
    assert.deepEqual(gotClient, []);
  });

  test('a subscribe refused for the rate limit is sent again until it is subscribed', async () => {
    const c = client();
    // 45 frames at once: the server's rate limit lets a burst of 40 through.
    const subs = Array.from({length: 45}, (_, i) => c.subscribe(`burst-${i}`));
    const refusedFor = [];
    for (const sub of subs) sub.on('refused', ({reason}) => refusedFor.push(reason));
    await within(Promise.all(subs.map((sub) => (sub.state === 'subscribed'
      ? null : new Promise((resolve) => sub.once('subscribed', resolve))))), 'every subscribed');
    assert.deepEqual(refusedFor, []);
    assert.deepEqual(new Set(subs.map((sub) => sub.state)), new Set(['subscribed']));
    // Some were refused for the rate limit, and sent again.
    assert.ok(subscribeFrames().length > 45, `${subscribeFrames().length} subscribe frames`);
    const last = next(subs[44], 'message');
    await server.publish('burst-44', 'made it');
    assert.equal(await last, 'made it');
    assert.equal(c.state, 'connected');
  });

  test('unsubscribe() before the answer leaves on the server too, and nothing of it arrives', async () => {
    await server.publish('chat-early', 'stored early');
    const c = client();
    const gotClient = [];
    c.on('message', (m) => gotClient.push(m));
    const stays = c.subscribe('chat-early-stays');
    await next(stays, 'subscribed');
    const early = c.subscribe('chat-early');
    const gotEarly = record(early, 'message', 'subscribed');
    const left = early.unsubscribe();
    assert.equal(early.state, 'unsubscribed');
    // Answered once the server subscribed it, and it left again.
    const answer = await within(left, 'unsubscribed');
    assert.deepEqual([answer.ws4tx, answer.channels], ['unsubscribed', ['ws4tx:broadcast:chat-early']]);
    await server.publish('chat-early', 'after');
    const later = next(stays, 'message');
    await server.publish('chat-early-stays', 'later');
    assert.equal(await later, 'later');
    assert.deepEqual(gotEarly, []);
    assert.deepEqual(gotClient, []);
  });

  test('emit and request name the subscription\'s facility in the envelope', async () => {
    const c = client();
    const echo = c.subscribe('echo');
    await next(echo, 'subscribed');
    const answer = echo.request('echo', {n: 1}).catch((error) => error);
    await within(answer, 'acknowledgement');
    const frame = JSON.parse(sent.find((f) => f.includes('"event":"echo"')));
    assert.equal(frame.facility, 'echo');
    assert.equal(frame.event, 'echo');
  });

  test('emit and request reach their own facility\'s handler, whose events come back to them alone', async () => {
    const c = client();
    const echo = c.subscribe('echo');
    const notes = c.subscribe('notes', {audiences: ['broadcast']});
    await Promise.all([next(echo, 'subscribed'), next(notes, 'subscribed')]);
    const gotEcho = record(echo, 'shouted');
    const gotNotes = record(notes, 'shouted');
    const gotClient = record(c, 'shouted');
    assert.deepEqual(await echo.request('echo', {n: 1}), {n: 1});
    assert.deepEqual(await notes.request('echo', {n: 2}), {notes: {n: 2}, facility: 'notes'});
    assert.deepEqual(await notes.request('shout', 'to notes'), {shouted: true});
    await until(notes, 'shouted', () => gotNotes.length === 1);
    assert.deepEqual(await echo.request('shout', 'to echo'), {shouted: true});
    await until(echo, 'shouted', () => gotEcho.length === 1);
    assert.deepEqual(gotNotes, [['shouted', {notes: 'to notes'}]]);
    assert.deepEqual(gotEcho, [['shouted', 'to echo']]);
    assert.deepEqual(gotClient, []);
    // Neither reached the client or the other subscription; the bare client reaches no handler.
    await assert.rejects(c.request('echo', 1), /no handler for event 'echo'/);
    await assert.rejects(notes.request('refuse', 1), /no handler for event 'refuse' of 'notes'/);
  });
});

describe('subscriptions across a server restart', () => {
  test('are restored with recovery from positions in the subscribe frame, never in the URL', async () => {
    const c = client();
    const a = c.subscribe('chat-restart-a');
    const b = c.subscribe('chat-restart-b');
    const gotA = record(a, 'message');
    const gotB = record(b, 'message');
    await Promise.all([next(a, 'ws4tx.positions'), next(b, 'ws4tx.positions')]);
    await server.publish('chat-restart-a', 'a1');
    await until(a, 'message', () => gotA.length === 1);

    const dropped = next(c, 'disconnected');
    await server.stop();
    assert.equal((await dropped).code, 1001);
    assert.deepEqual([a.state, b.state], ['subscribing', 'subscribing']);
    await server.publish('chat-restart-a', 'a2');
    await server.publish('chat-restart-a', 'a3');
    await server.publish('chat-restart-b', 'b1');
    const verdicts = [next(a, 'recovered'), next(b, 'recovered')];
    await server.start();
    const [va, vb] = await Promise.all(verdicts);

    assert.deepEqual(va, {recovered: true, channels: {
      'ws4tx:broadcast:chat-restart-a': {recovered: true, messages: 2}}});
    assert.deepEqual(vb, {recovered: true, channels: {
      'ws4tx:broadcast:chat-restart-b': {recovered: true, messages: 1}}});
    assert.deepEqual(gotA, [['message', 'a1'], ['message', 'a2'], ['message', 'a3']]);
    assert.deepEqual(gotB, [['message', 'b1']]);
    assert.deepEqual([a.state, b.state], ['subscribed', 'subscribed']);
    assert.ok(dialed.length >= 2);
    assert.deepEqual(dialed.filter((url) => url !== server.url), []);
    const again = subscribeFrames().slice(2);
    assert.deepEqual(again.map((f) => [f.facility, Object.keys(f.recover)]), [
      ['chat-restart-a', ['ws4tx:broadcast:chat-restart-a']],
      ['chat-restart-b', ['ws4tx:broadcast:chat-restart-b']]]);
    assert.match(again[0].recover['ws4tx:broadcast:chat-restart-a'], /^[0-9a-f]{16}:1$/);
  });
});
