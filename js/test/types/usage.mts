// Typed usage of the package as an ES module importer sees it (checked by `tsc`, never run):
// every option, event, method and export, and what the types must refuse.
import {AckError, connect, SUBPROTOCOL, WS4Redis, WS4TX} from 'ws4tx';
import type {
  AckCallback, DisconnectedInfo, Position, PresenceEntry, RawData, RecoveredInfo,
  Transport, WebSocketConstructor, WS4TXOptions,
} from 'ws4tx';

const options: WS4TXOptions = {
  heartbeat: '--heartbeat--',
  heartbeatInterval: 5000,
  maxMissedHeartbeats: 3,
  reconnect: true,
  minDelay: 500,
  maxDelay: 30000,
  ackTimeout: null,
  protocols: ['chat.v2'],
  binaryType: 'arraybuffer',
  recover: true,
  maxQueryLength: 4096,
  WebSocket,
  fetch,
};

interface ChatMessage { from: string; text: string }
interface ChatEvents { message: ChatMessage; typing: {on: boolean}; custom: {anything: number} }
const chat = new WS4TX<ChatEvents>('wss://example.com/ws/chat?subscribe-broadcast', options);
const text: string = SUBPROTOCOL;
const sub: 'ws4tx.v1' = WS4TX.SUBPROTOCOL;
const codes: number[] = WS4TX.FINAL_CODES;
const beat: 4000 = WS4TX.HEARTBEAT_TIMEOUT;
const cap: 2048 = WS4TX.MAX_QUERY_LENGTH;
const Ack: typeof AckError = WS4TX.AckError;

chat
  .on('message', (data) => {        // the declared event
    const m: ChatMessage = data;
    void m.text.length;
  })
  .on('connecting', ({attempt}) => { const n: number = attempt; void n; })
  .on('connected', ({protocol}) => { const p: string = protocol; void p; })
  .on('disconnected', (info: DisconnectedInfo) => { void info.reconnect; })
  .on('reconnecting', ({attempt, delay}) => { void (attempt + delay); })
  .on('recovered', (info: RecoveredInfo) => {
    if (!info.recovered) { const reason: string = info.reason; void reason; }
    for (const [channel, result] of Object.entries(info.channels)) {
      void channel;
      if (result.recovered) { const n: number = result.messages; void n; }
    }
  })
  .on('ws4tx.error', ({message}) => { const m: string = message; void m; })
  .on('ws4tx.interrupted', (nothing) => { const n: null = nothing; void n; })
  .on('ws4tx.resumed', () => {})
  .on('ws4tx.recovered', (info) => { void info.channels; })
  .on('ws4tx.dropped', ({messages}) => { const n: number = messages; void n; })
  .on('ws4tx.presence', ({joined, left}) => {
    const who: PresenceEntry[] = joined;
    const user: string | null = who[0].user;
    const since: number = who[0].since;
    const gone: string[] = left;
    void [user, since, gone];
  })
  .on('custom', function (data) {
    const client: WS4TX<ChatEvents> = this;   // handlers get the client as this
    const n: number = data.anything;          // a declared event's data
    void [client, n];
  })
  .on('refused', ({status, reason}) => { void [status.toFixed(), reason.length]; })
  .once('connected', () => {})
  .off('connected')
  .off()
  .off('message', () => {});

// A raw client's messages: string or binary.
const raw = connect('ws://localhost:8000/ws/raw');
raw.on('message', (data: RawData) => { if (typeof data === 'string') void data.length; });

const sent: boolean = chat.emit('typing', {on: true});
chat.emit('typing');
const callback: AckCallback<{delivered: boolean}> = (error, reply) => {
  if (error) {
    const code: 'error' | 'timeout' | 'disconnected' | 'not-connected' = error.code;
    const event: string | undefined = error.event;
    void [code, event, error.message];
  } else {
    void reply?.delivered;
  }
};
chat.emit('message', {from: 'me', text: 'hi'}, callback);
const reply: Promise<{delivered: boolean}> = chat.request<{delivered: boolean}>(
  'message', {from: 'me', text: 'hi'});
reply.catch((error: unknown) => { if (error instanceof AckError) void error.code; });
chat.send('raw');
chat.send(new Uint8Array([1, 2]));
chat.send(new ArrayBuffer(2));
chat.send(new Blob(['x']));
const state: 'connecting' | 'connected' | 'reconnecting' | 'closed' = chat.state;
const ready: number = chat.readyState;
const carried: 'websocket' | 'sse' = chat.transport;
chat.on('transport', ({transport, previous}) => {
  const now: Transport = transport;
  const before: Transport = previous;
});
const fallback = new WS4TX('ws://x/ws/f', {sse: true, retryWebSocket: 30000,
                                           csrfCookie: 'csrftoken', csrfHeader: 'X-CSRFToken'});
const never = new WS4TX('ws://x/ws/f', {sse: false, retryWebSocket: null});
// @ts-expect-error: a transport is 'websocket' or 'sse'
const wrong: 'polling' = chat.transport;
const positions: Record<string, Position> = chat.positions;
void [positions['ws4tx:broadcast:chat']?.epoch, positions['ws4tx:broadcast:chat']?.offset];
chat.close();
chat.close(1000, 'bye');

// A URL function, called before every attempt (a fresh token, say).
connect(async () => `wss://example.com/ws/chat?token=${await Promise.resolve('t')}`);
connect(() => 'wss://example.com/ws/chat', {ackTimeout: 0});

// ws4redis.js's API, with or without new.
const legacy: WS4Redis = WS4Redis({
  uri: 'ws://localhost:8000/ws/foobar?subscribe-broadcast',
  connecting() {},
  connected() {},
  disconnected(evt) { void [evt.code, evt.reason, evt.wasClean, evt.type]; },
  receive_message(message) { void message; },
  heartbeat_msg: '--heartbeat--',
}, {});
const legacy2 = new WS4Redis({uri: 'ws://x/ws/f', maxDelay: 1000});
const flags: boolean[] = [legacy.is_connecting(), legacy.is_connected(), legacy.is_closing(),
                          legacy2.is_closed(), legacy.send_message('hello')];
const stateCode: number = legacy.get_state();
legacy.close();

// Any constructor shaped like a WebSocket may be injected.
const Injected: WebSocketConstructor = WebSocket;
new WS4TX('ws://x/ws/f', {WebSocket: Injected});

// A token function for the URL and for the refresh the server asks for.
const refreshing = new WS4TX('ws://x/ws/f', {token: () => fetch('/token').then((r) => r.text())});
refreshing.on('refreshed', ({expires}) => { const until: number = expires; void until; });
refreshing.on('ws4tx.positions', ({channels}) => { void channels['c']?.offset; });
refreshing.on('ws4tx.unsubscribed', ({audiences, reason}) => { void [audiences[0], reason]; });

void [text, sub, codes, beat, cap, Ack, sent, state, ready, flags, stateCode];

// What the types refuse.
// @ts-expect-error: an option of the wrong type
new WS4TX('ws://x/ws/f', {heartbeatInterval: '5s'});
// @ts-expect-error: an unknown option
new WS4TX('ws://x/ws/f', {heartbeats: 3});
// @ts-expect-error: the URI is a string or a function of one
new WS4TX(42);
// @ts-expect-error: a built-in event's data has its type
chat.on('reconnecting', (info: {attempt: string}) => { void info; });
// @ts-expect-error: a declared application event's data has its type
chat.on('message', (data: number) => { void data; });
// @ts-expect-error: an event name is a string
chat.emit(1, {});
// (typed-events.mts: what a client with an event map refuses)
// @ts-expect-error: positions are read-only
chat.positions = {};
// @ts-expect-error: a token comes from a function, not a string
new WS4TX('ws://x/ws/f', {token: 'secret'});
// @ts-expect-error: WS4Redis needs a uri
WS4Redis({connected() {}});
// @ts-expect-error: an AckError's code is one of four
const wrong: AckError['code'] = 'lost';
void wrong;
