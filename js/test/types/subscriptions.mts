// Subscriptions on one connection, typed as the README shows them (checked by
// `tsc --strict`, never run): subscribe<Map>() types a subscription's events as
// new WS4TX<Map>() types the client's, both ways.
import {WS4TX} from 'ws4tx';
import type {Position, RecoveredInfo, Subscription} from 'ws4tx';

interface Note { from: string; text: string }
interface NotificationEvents { note: Note; cleared: null }
interface ChatEvents { message: {from: string; text: string}; typing: {on: boolean} }

declare const rendered: Record<string, Position>;
declare function fetchNotes(): Promise<{count: number; positions: Record<string, Position>}>;

const client = new WS4TX('/ws/', {positions: rendered, getState: () => fetchNotes()});
const notes: Subscription<NotificationEvents> = client.subscribe<NotificationEvents>(
  'notifications', {audiences: ['user'], positions: rendered,
                    getState() { return fetchNotes(); }});
notes.on('note', ({from, text}) => { void [from.length, text.length]; });
notes.once('cleared', (data) => { const nothing: null = data; void nothing; });
notes.on('recovered', (info: RecoveredInfo) => { void info.recovered; });
notes.on('subscribed', ({channels}) => { void channels.join(); });
notes.on('refused', ({reason}) => { void reason.length; });
notes.on('ws4tx.presence', ({joined}) => { void joined.length; });
notes.off('note').off();
const state: 'subscribing' | 'subscribed' | 'unsubscribed' | 'refused' = notes.state;
const where: Record<string, Position> = notes.positions;
void [state, where, notes.channels, notes.facility];

const chat = client.subscribe<ChatEvents>('chat', {audiences: {broadcast: true, groups: ['staff']}});
chat.on('message', (data) => { void data.text.toUpperCase(); });
const sent: boolean = chat.emit('typing', {on: true});
chat.emit('message', {from: 'me', text: 'hi'}, (error, reply) => { void [error, reply]; });
const reply: Promise<{delivered: boolean}> =
  chat.request<{delivered: boolean}>('message', {from: 'me', text: 'hi'});
void [sent, reply, chat.unsubscribe(), client.subscriptions.length];

// Without a map: any name, any data.
const any = client.subscribe('news', {groups: ['staff'], recover: false});
any.on('whatever', (data) => { void data.anything; });
any.emit('shout', 42);
