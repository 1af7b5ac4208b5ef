// A real ws4tx server for the tests: Redis and `twistd ws4tx`, run by ws4tx_server.py (see
// there), driven over its stdin and stdout. The Python is $WS4TX_PYTHON, else python3; it
// needs ws4tx with its django and embedded extras (or a redis-server on PATH).
import {spawn} from 'node:child_process';
import {dirname, join} from 'node:path';
import {createInterface} from 'node:readline';
import {fileURLToPath} from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
/** How long anything a test waits for may take. */
export const WAIT = 20000;

/** `promise`, or a rejection naming `what` after `ms`. */
export function within(promise, what, ms = WAIT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `event` of `client` (for which `accept(data)` holds), bounded. */
export function next(client, event, accept = () => true) {
  return within(new Promise((resolve) => {
    const handler = (data) => {
      if (!accept(data)) return;
      client.off(event, handler);
      resolve(data);
    };
    client.on(event, handler);
  }), `'${event}' event`);
}

export class Server {
  /** Start Redis and the server; resolves once the server is subscribed to Redis. */
  static async start() {
    const python = process.env.WS4TX_PYTHON || 'python3';
    const child = spawn(python, [join(HERE, 'ws4tx_server.py')],
                        {stdio: ['pipe', 'pipe', 'pipe']});
    const server = new Server(child);
    const ready = await within(server._answer(), 'ws4tx server').catch((error) => {
      server.close();
      throw new Error(`${error.message}\n${server.output}`);
    });
    server.url = ready.url;      // ws://127.0.0.1:PORT/ws/
    server.redis = ready.redis;
    return server;
  }

  constructor(child) {
    this.child = child;
    this.output = '';            // twistd's and the helper's stderr, for failure messages
    this._waiting = [];
    this._lines = [];
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text) => { this.output += text; });
    const lines = createInterface({input: child.stdout});
    lines.on('line', (line) => {
      const waiter = this._waiting.shift();
      if (waiter) waiter.resolve(JSON.parse(line));
      else this._lines.push(line);
    });
    child.on('exit', (code) => {
      for (const waiter of this._waiting.splice(0)) {
        waiter.reject(new Error(`ws4tx_server.py exited (${code}):\n${this.output}`));
      }
    });
  }

  _answer() {
    if (this._lines.length) return Promise.resolve(JSON.parse(this._lines.shift()));
    return new Promise((resolve, reject) => this._waiting.push({resolve, reject}));
  }

  /** Run a command of ws4tx_server.py; resolves with its result, rejects with its error. */
  async command(command) {
    this.child.stdin.write(JSON.stringify(command) + '\n');
    const answer = await within(this._answer(), `answer to ${JSON.stringify(command)}`);
    if ('error' in answer) throw new Error(`${command.do}: ${answer.error}\n${this.output}`);
    return answer.ok;
  }

  /** Publish `message` (a string, or bytes) to everybody on `facility`, from the Django
   *  side (ws4tx.api.publish). */
  publish(facility, message) {
    return typeof message === 'string'
      ? this.command({do: 'publish', facility, message})
      : this.command({do: 'publish', facility, message64: Buffer.from(message).toString('base64')});
  }

  /** Publish each of `messages` (strings), in order, to everybody on `facility`. */
  publishAll(facility, messages) {
    return this.command({do: 'publish', facility, messages});
  }

  /** Where the broadcast channel of `facility` stands, as `{% ws4tx_position %}` renders
   *  it: {channel: {epoch, offset}}. */
  position(facility) {
    return this.command({do: 'position', facility});
  }

  /** Send the event to everybody on `facility`, from the Django side (ws4tx.api.emit). */
  emit(facility, event, data) {
    return this.command({do: 'emit', facility, event, data});
  }

  /** Stop the server (its clients are closed with 1001). */
  stop() { return this.command({do: 'stop'}); }

  /** Start it again, on the same port and Redis. Clients may connect before this
   *  resolves (the server listens before its Redis subscriber is up, which this waits
   *  for): listen for their 'connected' before calling it. */
  start() { return this.command({do: 'start'}); }

  /** Stop everything: the end of stdin stops the server and Redis. */
  async close() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end();
    await within(exited, 'end of ws4tx_server.py').catch((error) => {
      this.child.kill('SIGKILL');
      throw error;
    });
  }
}
