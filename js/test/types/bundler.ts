// The package's types as a bundler resolves them, without the DOM's types (a project that
// injects Node's `ws`): checked by `tsc -p tsconfig.bundler.json`, never run.
import {connect, WS4TX, type RawData, type WebSocketLike} from 'ws4tx';

declare class NodeSocket implements WebSocketLike {
  constructor(url: string, protocols?: string | string[]);
  readonly readyState: number;
  readonly protocol: string;
  binaryType: 'nodebuffer' | 'arraybuffer' | 'fragments';
  send(data: unknown): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: {type: string}) => void) | null;
  onmessage: ((event: {data: unknown}) => void) | null;
  onerror: ((event: {error: unknown}) => void) | null;
  onclose: ((event: {code: number; reason: string; wasClean: boolean}) => void) | null;
}

const client: WS4TX = connect('ws://127.0.0.1:8000/ws/chat?subscribe-broadcast',
                              {WebSocket: NodeSocket, binaryType: 'arraybuffer'});
client.on('message', (data: RawData) => { if (data instanceof ArrayBuffer) void data.byteLength; });
client.on('ws4tx.dropped', ({messages}) => { void messages.toFixed(); });
