// What a client of an event map refuses (checked by `tsc --strict`, never run): each line
// after `@ts-expect-error` must be an error, else tsc fails ("Unused '@ts-expect-error'").
import {connect, WS4TX} from 'ws4tx';

interface Message { from: string; text: string }
interface ChatEvents { message: Message; typing: {on: boolean} }
const chat = new WS4TX<ChatEvents>('wss://example.com/ws/chat?subscribe-broadcast');

// @ts-expect-error: a misspelled event name
chat.on('mesage', () => {});
// @ts-expect-error: a misspelled event name, once
chat.once('typin', () => {});
// @ts-expect-error: a misspelled event name, off
chat.off('mesage');
// @ts-expect-error: a misspelled built-in event
chat.on('reconected', () => {});
// @ts-expect-error: a handler of the wrong data type
chat.on('message', (data: {text: number}) => { void data; });
// @ts-expect-error: the data has no such field
chat.on('typing', (data) => { void data.off; });
// @ts-expect-error: a wrong payload
chat.request('message', {text: 1});
// @ts-expect-error: a wrong payload
chat.emit('message', 42);
// @ts-expect-error: a wrong payload, with an acknowledgement
chat.emit('typing', {on: 'yes'}, () => {});
// @ts-expect-error: an event the map does not declare
chat.emit('shout', {});
// @ts-expect-error: an event the map does not declare
chat.request<{ok: boolean}>('shout', {});
// @ts-expect-error: the built-in events are the client's own, not to emit
chat.emit('connected', {protocol: 'x'});
// @ts-expect-error: connect() takes the map too
connect<ChatEvents>('ws://x/ws/chat').on('mesage', () => {});
