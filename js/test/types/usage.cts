// Typed usage of the package as require() sees it (checked by `tsc`, never run).
import ws4tx = require('ws4tx');

const client: ws4tx.WS4TX = ws4tx.connect('ws://localhost:8000/ws/chat?subscribe-broadcast',
                                          {heartbeat: null});
client.on('connected', ({protocol}) => { void protocol.length; });
client.request('message', {text: 'hi'}).then((reply) => void reply,
                                             (error: ws4tx.AckError) => void error.code);
const legacy: ws4tx.WS4Redis = ws4tx.WS4Redis({uri: 'ws://x/ws/f'});
const sub: 'ws4tx.v1' = ws4tx.SUBPROTOCOL;
void [legacy, sub];
// @ts-expect-error: no such export
ws4tx.WS4Chat;
