/**
 * Types of ws4tx.js, the browser client of ws4tx (real-time push for Django sites).
 * The wire protocol, every event and every close code: docs/protocol.md of ws4tx.
 *
 * Written by hand beside the script (ws4tx/static/ws4tx/ws4tx.js); the package's tests
 * check that every name and public member the script has is declared here.
 */

/** The subprotocol of event clients. */
export declare const SUBPROTOCOL: 'ws4tx.v1';

/** `Blob` where the environment has one (the DOM, Node's types), else nothing. */
type BlobLike = typeof globalThis extends { Blob: { prototype: infer B } } ? B : never;
/** AbortSignal where the environment has one. */
type SignalLike = typeof globalThis extends { AbortSignal: { prototype: infer S } } ? S : never;


/** A raw payload as the socket gives it: text, or binary by the socket's `binaryType`
 *  (a `Blob` by default in browsers, an `ArrayBuffer` with `binaryType: 'arraybuffer'`;
 *  a Node `Buffer` from the `ws` package by default). */
export type RawData = string | ArrayBuffer | BlobLike | ArrayBufferView;

/** What `send()` takes: a text or binary frame. */
export type SendData = string | ArrayBufferLike | ArrayBufferView | BlobLike;

/** The part of a WebSocket ws4tx.js uses: the browser's, Node's built-in one (Node 22+), or
 *  the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  send(data: any): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
}

/** A WebSocket constructor, such as `WebSocket` or the `ws` package's default export. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Where to connect: the URL, or a function called before every attempt that returns it or
 *  a Promise of it (to fetch a fresh `?token=...`, say). A failed call or rejected Promise
 *  counts as a failed attempt: it is reported and retried with the backoff. */
export type Uri = string | (() => string | PromiseLike<string>);

/** The options both clients share (defaults in brackets). */
export interface ConnectionOptions {
  /** Milliseconds between heartbeats [5000]. */
  heartbeatInterval?: number;
  /** Unanswered heartbeats before the socket is dropped (closed with 4000) [3]. */
  maxMissedHeartbeats?: number;
  /** Reconnect after a drop, with full-jitter exponential backoff [true]. */
  reconnect?: boolean;
  /** Milliseconds: the cap of the first retry's delay [500]. */
  minDelay?: number;
  /** Milliseconds: the largest cap of a retry's delay [30000]. */
  maxDelay?: number;
  /** Milliseconds a WebSocket (or event stream) may take to open; after them the attempt
   *  is given up as a socket that closed before it opened ('disconnected' with 1006,
   *  `opening timed out`) and the backoff goes on; null: no limit [20000]. */
  openTimeout?: number | null;
  /** Extra subprotocols (after `ws4tx.v1` for WS4TX) [[]]. */
  protocols?: string | string[];
  /** Set on every socket: 'blob' (the browser's default) or 'arraybuffer' [unset]. */
  binaryType?: 'blob' | 'arraybuffer' | (string & {});
  /** The WebSocket constructor to use instead of the global one (Node without a global
   *  WebSocket: the `ws` package) [the global `WebSocket`]. */
  WebSocket?: WebSocketConstructor;
  /** The fetch function to use instead of the global one: after 2, 4, 8, ... sockets in a
   *  row closed before they opened, the URL is fetched without Upgrade to learn whether
   *  the server refuses its handshake ('refused'); WS4TX on SSE reads its event stream and
   *  POSTs with it [the global `fetch`]. */
  fetch?: (url: string, init: FetchInit) => PromiseLike<FetchResponse>;
}

/** What ws4tx.js passes to `fetch`: a probe (no method), an event stream (headers
 *  `Accept: text/event-stream`, maybe `Last-Event-ID`, and an abort signal) or a POST. */
export interface FetchInit {
  method?: 'POST';
  headers?: Record<string, string>;
  body?: string | ArrayBuffer | BlobLike;
  credentials: 'include';
  cache: 'no-store';
  signal?: SignalLike;
}

/** What ws4tx.js reads of a fetch's answer (`headers` and `body` for event streams). */
export interface FetchResponse {
  status: number;
  statusText: string;
  text(): PromiseLike<string>;
  headers?: {get(name: string): string | null};
  body?: {getReader(): {read(): PromiseLike<{done: boolean; value?: Uint8Array}>;
                        cancel(): PromiseLike<void>}} | null;
}

/** How a connection carries the protocol: a WebSocket, or an event stream of the same URL
 *  with POSTs to it (docs/protocol.md, Server-Sent Events). */
export type Transport = 'websocket' | 'sse';

/** The options of the event client (defaults in brackets). */
export interface WS4TXOptions extends ConnectionOptions {
  /** A text sent every `heartbeatInterval` and echoed by the server (the server's
   *  HEARTBEAT setting); null: no heartbeat [null]. */
  heartbeat?: string | null;
  /** Milliseconds an acknowledgement may take; 0 or null: no limit [10000]. */
  ackTimeout?: number | null;
  /** On a facility with history: ask, when reconnecting, for what was missed [true]. */
  recover?: boolean;
  /** A function returning a token (or a Promise of one), called before every attempt (the
   *  token is added to the URL as `?token=...`) and again when the server asks for a fresh
   *  one ('ws4tx.refresh'): the connection then stays open past the old token's expiry
   *  ('refreshed'); without it the server closes with 4002 at the expiry [null]. */
  token?: (() => string | PromiseLike<string>) | null;
  /** Ask the server for a resume token (`resume=` in the URL) and present its latest
   *  ('ws4tx.session') on the next reconnect, once, within `maxQueryLength`: the server
   *  then reopens the same channels without authenticating again (it falls back to the
   *  cookie or token when it refuses the resume token) [false]. */
  resume?: boolean;
  /** The server's MAX_QUERY_LENGTH (414 past it): recovery positions that would make the
   *  URL's query longer are left out, and their channels reported not recovered
   *  ('query-too-long'); 0: no cap [2048]. */
  maxQueryLength?: number;
  /** Where the URL's channels stood when the page was rendered (`{% ws4tx_position %}`):
   *  the first connect recovers from there, so that nothing published between the render
   *  and the connect is missed or applied twice [null]. */
  positions?: Record<string, Position> | null;
  /** Called (with the client as `this`) once after each 'recovered' false: fetch the
   *  page's state anew. Until it returns (or its Promise settles), no live message is
   *  applied; then those held are, in order, without those at or before the
   *  `positions` ({channel: {epoch, offset}}) its result may carry [null]. */
  getState?: GetState | null;
  /** After WebSockets to the URL closed before they opened (three in a row, the URL
   *  answered over plain HTTP after the second: a proxy that strips Upgrade), read the same URL as an event stream (Server-Sent Events, resumed
   *  by Last-Event-ID) and send by POST to it; subscriptions wait ('subscribing') for the
   *  WebSocket; false: keep dialing the WebSocket [true]. */
  sse?: boolean;
  /** Milliseconds on SSE before the WebSocket is tried again, doubling after each try
   *  that fails, up to 10 minutes; null: never [60000]. */
  retryWebSocket?: number | null;
  /** Milliseconds an open event stream may go without a byte (the server's `: ping`
   *  comments come every 25 s) before it is dropped like one that ended; null: never
   *  [60000]. */
  streamTimeout?: number | null;
  /** The cookie whose value a POST sends in `csrfHeader` (Django's CSRF check of cookie
   *  identities) ['csrftoken']. */
  csrfCookie?: string;
  /** ['X-CSRFToken'] */
  csrfHeader?: string;
}

/** A page's resync after a recovery that failed: what it returns (or its Promise gives)
 *  may carry `positions`, where the fetched state stands; messages at or before them are
 *  then not applied. */
export type GetState = () => unknown;

/** 'connecting': a socket is being opened (attempt 0 first, then the reconnect's). */
export interface ConnectingInfo { attempt: number }
/** 'connected': the socket is open. */
export interface ConnectedInfo { protocol: string }
/** 'transport': the connection that opened is of another transport than the last one. */
export interface TransportInfo { transport: Transport; previous: Transport }
/** 'disconnected': a socket closed (or none could be made: code 1006). */
export interface DisconnectedInfo {
  code: number;
  reason: string;
  wasClean: boolean;
  /** Whether a reconnect follows (false after close(), 1008, 4401, 4403; a refusal found
   *  later stops it all the same: 'refused'). */
  reconnect: boolean;
}
/** 'reconnecting': the next attempt (1, 2, ...) in `delay` ms. */
export interface ReconnectingInfo { attempt: number; delay: number }

/** Why a channel's missed messages could not be delivered: the server's reasons, and
 *  the client's own for a position that did not go to the server ('query-too-long': it
 *  did not fit in the URL; 'refused': the URL with positions was refused). */
export type RecoveryReason = 'trimmed' | 'epoch' | 'position' | 'gap' | 'unavailable'
  | 'query-too-long' | 'refused';

/** 'refused': the server refuses the handshake of the client's URL (an HTTP status such as
 *  400, 403, 404 or 414, and its reason); the client stopped (state 'closed'). */
export interface RefusedInfo { status: number; reason: string }

/** A channel's result in 'recovered'. */
export type ChannelRecovery =
  | { recovered: true; messages: number }
  | { recovered: false; reason: RecoveryReason | (string & {}) };

/** 'recovered' (and 'ws4tx.recovered'): after a reconnect that asked for the messages
 *  missed meanwhile. true: every one of them was delivered, once and in order, before this
 *  event; false: none was (resync the page's state). */
export type RecoveredInfo =
  | { recovered: true; channels: Record<string, ChannelRecovery> }
  | { recovered: false; reason: RecoveryReason | (string & {});
      channels: Record<string, ChannelRecovery> };

/** The position of a channel's last message (facilities with history). */
export interface Position { epoch: string; offset: number }

/** A client on a facility with presence. */
export interface PresenceEntry {
  id: string;
  /** The user name; null for an anonymous client. */
  user: string | null;
  /** When it connected, Unix seconds. */
  since: number;
  /** What the site's handler gave (`EventHandler.presence_info`), when it gave some. */
  info?: Record<string, unknown>;
}

/** The events ws4tx.js and the server fire, with their data. */
export interface WS4TXEventMap {
  /** A frame that is not an envelope. */
  message: RawData;
  connecting: ConnectingInfo;
  connected: ConnectedInfo;
  transport: TransportInfo;
  disconnected: DisconnectedInfo;
  reconnecting: ReconnectingInfo;
  recovered: RecoveredInfo;
  refused: RefusedInfo;
  /** The server took the fresh token of the `token` function: open until `expires`
   *  (Unix seconds). */
  refreshed: { expires: number };
  /** An event of this client failed without an id, an invalid envelope, a rate limit. */
  'ws4tx.error': { message: string };
  /** The server lost Redis: messages may be missed until 'ws4tx.resumed'. */
  'ws4tx.interrupted': null;
  /** Delivery is back: resync application state. */
  'ws4tx.resumed': null;
  'ws4tx.recovered': RecoveredInfo;
  /** The server fell behind and dropped `messages` messages of this client's channels. */
  'ws4tx.dropped': { messages: number };
  /** Clients came (`joined`) or went (`left`: their ids), on a facility with presence. */
  'ws4tx.presence': { joined: PresenceEntry[]; left: string[] };
  /** Where channels stand that this client has no position for (facilities with history). */
  'ws4tx.positions': { channels: Record<string, Position> };
  /** The connection's token expires at `expires` (Unix seconds); ws4tx.js answers with a
   *  fresh token from its `token` option. */
  'ws4tx.refresh': { expires: number };
  /** A resume token for this connection's next reconnect, valid until `expires` (Unix
   *  seconds); ws4tx.js keeps the latest when its `resume` option is on. */
  'ws4tx.session': { resume: string; expires: number };
  /** The site made this connection leave its channels of those audiences (of those groups
   *  only, when `groups` is there); it stays open. */
  'ws4tx.unsubscribed': { audiences: Array<'broadcast' | 'user' | 'group' | 'session'>;
                          groups?: string[] | null; reason: string };
  /** The site made this connection subscribe `channels` (`ws4tx.api.subscribe`); their
   *  messages come to the client (they are no Subscription of its own). */
  'ws4tx.subscribed': { facility: string; audiences: string[]; channels: string[];
                        reason: string };
}

/** A subscription's own events (see Subscription), with their data. */
export interface SubscriptionEventMap {
  /** A frame of its channels that is not an envelope. */
  message: RawData;
  /** The server subscribed its channels (again, after a reconnect). */
  subscribed: { channels: string[] };
  /** unsubscribe() was called: nothing more of its channels is delivered. */
  unsubscribed: null;
  /** The server refused the subscribe (the reason is the server's); the client's other
   *  subscriptions and its connection are as they were. A refusal that says to come back
   *  (the rate limit, 'retry later') is not told: the subscribe is sent again, with
   *  full-jitter backoff. */
  refused: { reason: string };
  /** After a subscribe (again, after a reconnect) with positions: whether every message
   *  missed meanwhile on its channels was delivered. */
  recovered: RecoveredInfo;
  'ws4tx.error': WS4TXEventMap['ws4tx.error'];
  'ws4tx.interrupted': null;
  'ws4tx.resumed': null;
  'ws4tx.recovered': RecoveredInfo;
  'ws4tx.dropped': WS4TXEventMap['ws4tx.dropped'];
  'ws4tx.presence': WS4TXEventMap['ws4tx.presence'];
  'ws4tx.positions': WS4TXEventMap['ws4tx.positions'];
  'ws4tx.unsubscribed': WS4TXEventMap['ws4tx.unsubscribed'];
  'ws4tx.subscribed': WS4TXEventMap['ws4tx.subscribed'];
}

/** A handler: called with the client as `this`; what it returns is ignored, what it throws
 *  is reported (reportError, or console.error) without stopping the client. */
export type Handler<T, C = WS4TX<any>> = (this: C, data: T) => void;

/** The application's events, by name: the data each carries, both ways (what the server
 *  sends, what the client emits or requests). The default, `Record<string, any>`, lets
 *  any name carry anything (an untyped client). */
export type EventMap = object;

/** The names of the application's events: its map's keys (any string for the default). */
export type AppEventName<Events> = keyof Events & string;

/** The names a client of `Events` may listen to: the application's events and the
 *  client's own (WS4TXEventMap). A misspelled name is a type error (unless `Events` is
 *  the permissive default). */
export type EventName<Events, Own = WS4TXEventMap> = AppEventName<Events> | keyof Own;

/** The data of event `K`: the application's declared 'message' event (a declared
 *  'message' says the facility carries that event: raw frames share its handlers), the
 *  client's own events' (WS4TXEventMap), or the application's. */
export type EventData<Events, K extends string, Own = WS4TXEventMap> =
  K extends 'message'
    ? (K extends keyof Events ? Events[K] : RawData)
    : K extends keyof Own
      ? Own[K]
      : (K extends keyof Events ? Events[K] : never);

/** The callback of an emit() with an acknowledgement: `(null, reply)` or `(error)`. */
export type AckCallback<R = any> = (error: AckError | null, reply?: R) => void;

/** Why an acknowledgement did not come. */
export declare class AckError extends Error {
  constructor(message: string, code: AckError['code'], event?: string);
  name: 'AckError';
  /** 'error': the server answered with an error (`message` is its text); 'timeout': none
   *  within `ackTimeout`; 'disconnected': the socket closed first; 'not-connected': there
   *  was no open socket to send it on. */
  code: 'error' | 'timeout' | 'disconnected' | 'not-connected';
  /** The event that was emitted. */
  event: string | undefined;
}

/**
 * The event client: named events with acknowledgements beside raw payloads, heartbeat,
 * reconnecting with backoff and, on facilities with history, recovery of missed messages.
 * It connects on the next microtask, so that handlers added right after construction see
 * 'connecting'.
 *
 * `Events` types the application's own events, by name, both ways:
 * `new WS4TX<{chat: {text: string}}>(url)`; then `on`, `once` and `off` take only those
 * names and the client's own, `emit` and `request` only those, each with its data's type.
 * Without it, any name carries anything.
 */
export declare class WS4TX<Events extends EventMap = Record<string, any>> {
  constructor(uri: Uri, options?: WS4TXOptions);

  static readonly SUBPROTOCOL: 'ws4tx.v1';
  /** Close codes after which the client stops reconnecting: 1008, 4401, 4403. */
  static readonly FINAL_CODES: number[];
  /** The code the client closes a socket with when its heartbeats go unanswered: 4000. */
  static readonly HEARTBEAT_TIMEOUT: 4000;
  /** The server's default query cap, maxQueryLength's default: 2048. */
  static readonly MAX_QUERY_LENGTH: 2048;
  static readonly AckError: typeof AckError;
  static readonly Subscription: typeof Subscription;

  /** 'connecting' | 'connected' | 'reconnecting' | 'closed' (after close(), a final code,
   *  or 'refused'). */
  readonly state: 'connecting' | 'connected' | 'reconnecting' | 'closed';
  /** The current socket's readyState (3, CLOSED, without one). */
  readonly readyState: number;
  /** The transport of the connection (the last one that opened): 'websocket' until a
   *  fallback to SSE ['websocket']. */
  readonly transport: Transport;
  /** The position of the last message of each channel with history, by channel name. */
  readonly positions: Record<string, Position>;

  /** Call `fn` with the data of each `event`: a server or application event, or one of
   *  the client's own (WS4TXEventMap). */
  on<K extends EventName<Events>>(event: K, fn: Handler<EventData<Events, K>, this>): this;

  /** on(), for the next time only. */
  once<K extends EventName<Events>>(event: K, fn: Handler<EventData<Events, K>, this>): this;

  /** off(): every handler; off(event): that event's; off(event, fn): that one (also when
   *  added with once()). */
  off(event?: EventName<Events>, fn?: (...args: any[]) => unknown): this;

  /** Send event `event` (one of `Events`) with JSON `data` (of its type); whether it was
   *  sent (nothing is queued while not connected). */
  emit<K extends AppEventName<Events>>(event: K, data?: Events[K]): boolean;
  /** ...asking for an acknowledgement: `callback(null, reply)`, or `callback(error)` with an
   *  AckError (also when not connected: then it returns false). */
  emit<K extends AppEventName<Events>, R = any>(event: K, data: Events[K],
                                                 callback: AckCallback<R>): boolean;

  /** emit() with an acknowledgement, as a Promise of the reply; rejects with an AckError.
   *  `R`, the reply's type, comes first: `request<Reply>('ask', data)`. */
  request<R = any, K extends AppEventName<Events> = AppEventName<Events>>(
    event: K, data?: Events[K]): Promise<R>;

  /** Send a raw frame; whether it was sent. */
  send(raw: SendData): boolean;

  /** Subscribe to `facility`'s channels on this connection (the URL may be the bare
   *  WebSocket URL, `/ws/`): a Subscription, subscribed once connected and again after
   *  every reconnect, with recovery. `E` types its events as `Events` types the
   *  client's: `client.subscribe<{note: {text: string}}>('notifications', ...)`. */
  subscribe<E extends EventMap = Record<string, any>>(facility: string,
                                                     options?: SubscribeOptions): Subscription<E>;
  /** The subscriptions the client subscribes (not those unsubscribed or refused). */
  readonly subscriptions: Array<Subscription<any>>;

  /** Close for good: no more reconnecting; 'disconnected' fires at once when a socket was
   *  connecting or open. */
  close(code?: number, reason?: string): void;
}

/** The audiences of a subscribe frame (docs/protocol.md, Subscribe). */
export interface SubscribeAudiences {
  broadcast?: boolean;
  user?: boolean;
  session?: boolean;
  /** true: all the user's groups; or some of them. */
  groups?: boolean | string[];
}

/** The options of client.subscribe() (defaults in brackets). */
export interface SubscribeOptions {
  /** Which of the facility's channels: names, or the frame's object [['broadcast']]. */
  audiences?: Array<'broadcast' | 'user' | 'group' | 'groups' | 'session'> | SubscribeAudiences;
  /** Some of the user's groups (the group audience of those only). */
  groups?: string[];
  /** A signed grant of the site for these channels (`{% ws4tx_grant %}`), or a function
   *  returning one (or a Promise of one), called before each subscribe: the server then
   *  admits the subscribe without authenticating it. A subscribe refused for its grant
   *  (`invalid grant: ...`, an expired one after a long reconnect, say) is sent again
   *  without it, authenticated as usual [null]. */
  grant?: string | (() => string | null | PromiseLike<string | null>) | null;
  /** Ask, when subscribing again after a reconnect, for what was missed [the client's
   *  `recover`]. */
  recover?: boolean;
  /** As the client's option, for this subscription's channels: where they stood when the
   *  page was rendered (positions of other channels are ignored). */
  positions?: Record<string, Position> | null;
  /** As the client's option: called, with the subscription as `this`, once after each
   *  'recovered' false; its live messages wait for it. */
  getState?: GetState | null;
}

/**
 * A facility's channels on a client's connection, from client.subscribe(): its own
 * handlers, state, positions and recovery. Messages of its channels (each names its
 * channel: with a position on a channel with history; raw messages of a channel without
 * history and the stored replay without one) go to it alone, nothing of a channel it left;
 * events that name its facility (a handler's emit, ws4tx.presence) go to the subscriptions
 * of that facility; the server's `ws4tx.*` events about the connection go to all.
 */
export declare class Subscription<Events extends EventMap = Record<string, any>> {
  private constructor();
  /** Its facility. */
  readonly facility: string;
  /** 'subscribing' (until the server's answer, and again while reconnecting) |
   *  'subscribed' | 'unsubscribed' | 'refused' (both final). */
  readonly state: 'subscribing' | 'subscribed' | 'unsubscribed' | 'refused';
  /** The channels the server subscribed (empty until 'subscribed'). */
  readonly channels: string[];
  /** The position of the last message of each of its channels with history. */
  readonly positions: Record<string, Position>;

  on<K extends EventName<Events, SubscriptionEventMap>>(
    event: K, fn: Handler<EventData<Events, K, SubscriptionEventMap>, this>): this;
  once<K extends EventName<Events, SubscriptionEventMap>>(
    event: K, fn: Handler<EventData<Events, K, SubscriptionEventMap>, this>): this;
  off(event?: EventName<Events, SubscriptionEventMap>, fn?: (...args: any[]) => unknown): this;

  /** The client's emit(), the envelope naming this subscription's facility. */
  emit<K extends AppEventName<Events>>(event: K, data?: Events[K]): boolean;
  emit<K extends AppEventName<Events>, R = any>(event: K, data: Events[K],
                                                 callback: AckCallback<R>): boolean;
  /** The client's request(), the envelope naming this subscription's facility. */
  request<R = any, K extends AppEventName<Events> = AppEventName<Events>>(
    event: K, data?: Events[K]): Promise<R>;

  /** Leave its channels: nothing of them is delivered after; a Promise of the server's
   *  answer (at once when not connected). It is not restored on a reconnect. */
  unsubscribe(): Promise<unknown>;
}

/** What a CloseEvent of ws4redis.js carries (an object with these fields when the client
 *  dropped the socket itself: close(), missed heartbeats). */
export interface CloseInfo {
  type: string;
  code: number;
  reason: string;
  wasClean: boolean;
}

/** The options of ws4redis.js's constructor, plus those of ConnectionOptions. Callbacks are
 *  called with the options object as `this`. */
export interface WS4RedisOptions extends ConnectionOptions {
  uri: Uri;
  connecting?: () => void;
  connected?: () => void;
  disconnected?: (evt: CloseInfo) => void;
  receive_message?: (message: RawData) => void;
  /** The heartbeat text [null: none]. */
  heartbeat_msg?: string | null;
}

/** A ws4redis.js connection: raw payloads only, no subprotocol requested. */
export interface WS4Redis {
  send_message(message: SendData): boolean;
  close(): void;
  /** The socket's readyState (3 without one). */
  get_state(): number;
  is_connecting(): boolean;
  is_connected(): boolean;
  is_closing(): boolean;
  is_closed(): boolean;
}

/** ws4redis.js's constructor, with or without `new`; a second argument (jQuery, for
 *  ws4redis.js) is ignored. Connects at once. */
export declare const WS4Redis: {
  new (options: WS4RedisOptions, ignored?: unknown): WS4Redis;
  (options: WS4RedisOptions, ignored?: unknown): WS4Redis;
  readonly prototype: WS4Redis;
};

/** `new WS4TX(uri, options)`. */
export declare function connect<Events extends EventMap = Record<string, any>>(
  uri: Uri, options?: WS4TXOptions): WS4TX<Events>;
