// What a typed subscription refuses (checked by `tsc --strict`, never run): each line after
// `@ts-expect-error` must be an error, else tsc fails ("Unused '@ts-expect-error'").
import {WS4TX} from 'ws4tx';

interface Note { from: string; text: string }
interface NotificationEvents { note: Note; cleared: null }
const client = new WS4TX('/ws/');
const notes = client.subscribe<NotificationEvents>('notifications', {audiences: ['user']});

// @ts-expect-error: a misspelled event name
notes.on('ntoe', () => {});
// @ts-expect-error: a misspelled event name, once
notes.once('clearde', () => {});
// @ts-expect-error: a misspelled event name, off
notes.off('ntoe');
// @ts-expect-error: a client's own event, not a subscription's
notes.on('reconnecting', () => {});
// @ts-expect-error: a handler of the wrong data type
notes.on('note', (data: {text: number}) => { void data; });
// @ts-expect-error: the data has no such field
notes.on('note', (data) => { void data.subject; });
// @ts-expect-error: a wrong payload
notes.emit('note', 42);
// @ts-expect-error: a wrong payload, as a request
notes.request('note', {from: 'me', text: 1});
// @ts-expect-error: a wrong payload, with an acknowledgement
notes.emit('note', {from: 1, text: 'x'}, () => {});
// @ts-expect-error: an event the map does not declare
notes.emit('shout', {});
// @ts-expect-error: an unknown audience
client.subscribe('notifications', {audiences: ['everyone']});
// @ts-expect-error: a facility is a string
client.subscribe(42);
// @ts-expect-error: state is one of four
const state: 'connected' = notes.state;
void state;
