// Typed events, as the README shows them (checked by `tsc --strict`, never run): a client
// of an event map takes only its events' names, each with its data's type, both ways; an
// untyped client (the default map) takes any name and any data, as before.
import {connect, WS4TX} from 'ws4tx';
import type {RawData, RecoveredInfo, RefusedInfo} from 'ws4tx';

interface Message { from: string; text: string }
interface ChatEvents {
  message: Message;
  typing: {on: boolean};
  presence: {who: string[]};
}

// The README's example, with its handler typed.
const chat = new WS4TX<ChatEvents>('wss://example.com/ws/chat?subscribe-broadcast');
chat.on('message', (data: Message) => { void data.text.toUpperCase(); });
chat.on('message', ({from, text}) => { void [from.length, text.length]; });
chat.once('presence', ({who}) => { void who.join(', '); });
chat.on('recovered', (info: RecoveredInfo) => { void info.recovered; });
chat.on('refused', ({status, reason}: RefusedInfo) => { void [status, reason]; });
chat.on('ws4tx.dropped', ({messages}) => { void messages.toFixed(); });
chat.off('typing').off('disconnected').off();
const sent: boolean = chat.emit('typing', {on: true});
chat.emit('message', {from: 'me', text: 'hi'}, (error, reply) => { void [error, reply]; });
const reply: Promise<{delivered: boolean}> =
  chat.request<{delivered: boolean}>('message', {from: 'me', text: 'hi'});
const inferred: Promise<any> = chat.request('typing', {on: false});
void [sent, reply, inferred];

// connect() takes the map too.
const typed: WS4TX<ChatEvents> = connect<ChatEvents>('ws://x/ws/chat');
typed.on('typing', ({on}) => { const b: boolean = on; void b; });

// The default map: any name, any data (raw frames for 'message').
const untyped = new WS4TX('ws://x/ws/chat');
untyped.on('mesage', (data) => { void data.whatever; });
untyped.on('message', (data: RawData) => { void data; });
untyped.emit('message', 42);
untyped.request('anything', {text: 1}).then((r) => void r);
untyped.on('reconnecting', ({attempt}) => { const n: number = attempt; void n; });
