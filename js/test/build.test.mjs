// The package's build and contents: dist/ is what build.mjs makes of the served script, the
// modules export the same API without globals, the types declare all of it, and the
// tarball holds what a registry needs and nothing else.
import assert from 'node:assert/strict';
import {execFile} from 'node:child_process';
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {createRequire} from 'node:module';
import {join} from 'node:path';
import {describe, test} from 'node:test';
import {promisify} from 'node:util';
import * as esm from 'ws4tx';
import {build, DIST, parts, SOURCE, stale, TYPES} from '../build.mjs';

const require = createRequire(import.meta.url);
const cjs = require('ws4tx');
const script = readFileSync(SOURCE, 'utf8');
const types = readFileSync(TYPES, 'utf8');
const ROOT = join(DIST, '..', '..');

/** The text of the declaration `export declare class|interface NAME ... }` in the types. */
function declaration(kind, name) {
  const start = types.search(new RegExp(`^export (declare )?${kind} ${name}\\b`, 'm'));
  assert.ok(start >= 0, `ws4tx.d.ts declares no ${kind} ${name}`);
  return types.slice(start, types.indexOf('\n}', start));
}

/** The names a block of the types declares as members (`name(`, `name<`, `name?:`...). */
function declares(block, name) {
  return new RegExp(`^\\s+(static )?(readonly )?'?${name.replace('.', '\\.')}'?[?]?[<(:]`, 'm')
    .test(block);
}

describe('dist/', () => {
  test('is what build.mjs makes of the served script (npm run build)', () => {
    assert.deepEqual(stale(), []);
  });

  test('ws4tx.js is the served script, byte for byte', () => {
    assert.equal(readFileSync(join(DIST, 'ws4tx.js'), 'utf8'), script);
  });

  test('the ES module and the CommonJS module export the same API, and set no globals', () => {
    const names = Object.keys(cjs).sort();
    assert.deepEqual(names, ['AckError', 'SUBPROTOCOL', 'WS4Redis', 'WS4TX', 'connect']);
    assert.deepEqual(Object.keys(esm).sort(), names);
    for (const name of names) assert.equal(typeof esm[name], typeof cjs[name], name);
    for (const name of ['WS4TX', 'WS4Redis', 'ws4tx']) assert.equal(globalThis[name], undefined);
  });

  test('a script that lost the markers of its factory is refused, not built wrong', () => {
    assert.throws(() => parts(script.replace('\nfunction (root) {\n', '\nfunction(root){\n')),
                  /exactly one line/);
    assert.throws(() => parts(script.trimEnd() + '\n// trailer\n'), /end with/);
    assert.throws(() => build(script.replace('connect: connect,', "'not-a-name': connect,"),
                              types), /exports not-a-name/);
  });
});

describe('ws4tx.d.ts', () => {
  test('declares every export', () => {
    for (const name of Object.keys(cjs)) {
      assert.match(types, new RegExp(`^export declare (class|const|function) ${name}\\b`, 'm'),
                   name);
    }
  });

  test('declares every public member of WS4TX, static ones included', () => {
    const block = declaration('class', 'WS4TX');
    const members = new Set(Object.keys(cjs.WS4TX));
    for (let proto = cjs.WS4TX.prototype; proto !== Object.prototype;
         proto = Object.getPrototypeOf(proto)) {
      for (const name of Object.getOwnPropertyNames(proto)) members.add(name);
    }
    const missing = [...members].filter((name) => name !== 'constructor'
      && !name.startsWith('_') && !declares(block, name));
    assert.deepEqual(missing, []);
  });

  test('declares every public member of Subscription', () => {
    const block = declaration('class', 'Subscription');
    const members = new Set();
    for (let proto = cjs.WS4TX.Subscription.prototype; proto !== Object.prototype;
         proto = Object.getPrototypeOf(proto)) {
      for (const name of Object.getOwnPropertyNames(proto)) members.add(name);
    }
    const client = new cjs.WS4TX('ws://nowhere/ws/', {WebSocket: class {}});
    for (const name of Object.keys(client.subscribe('f'))) members.add(name);
    client.close();
    const missing = [...members].filter((name) => name !== 'constructor'
      && !name.startsWith('_') && !declares(block, name));
    assert.deepEqual(missing, []);
    assert.ok(members.has('unsubscribe') && members.has('facility'), [...members].join());
  });

  test("declares every method of WS4Redis and every field of AckError", () => {
    const sockets = [];
    class Inert {
      constructor() { this.readyState = 0; sockets.push(this); }
      close() { this.readyState = 3; }
    }
    const legacy = cjs.WS4Redis({uri: 'ws://nowhere/ws/f', WebSocket: Inert});
    legacy.close();
    const block = declaration('interface', 'WS4Redis');
    assert.deepEqual(Object.keys(legacy).filter((n) => !n.startsWith('_') && !declares(block, n)),
                     []);
    const error = declaration('class', 'AckError');
    const fields = Object.keys(new cjs.AckError('m', 'timeout', 'e')).concat('name');
    assert.deepEqual(fields.filter((name) => !declares(error, name)), []);
    assert.equal(sockets.length, 1);
  });

  test('declares every option of the script (its DEFAULTS)', () => {
    const defaults = script.match(/var DEFAULTS = \{\n([\s\S]*?)\n  \};/);
    assert.ok(defaults, 'DEFAULTS not found in the script');
    const options = [...defaults[1].matchAll(/^ {4}(\w+):/gm)].map((m) => m[1]);
    assert.ok(options.length >= 10, options.join());
    const block = declaration('interface', 'ConnectionOptions')
      + declaration('interface', 'WS4TXOptions');
    assert.deepEqual(options.filter((name) => !declares(block, name)), []);
  });

  test("declares every event the client fires and every ws4tx.* event of the server", () => {
    // What a Subscription fires ('subscribed', ...) is in its own map.
    const own = script.slice(script.indexOf('  class Subscription extends Scope'),
                             script.indexOf('  /** The event client: see the header. */'));
    const subscriptionMap = declaration('interface', 'SubscriptionEventMap');
    const ownFired = [...own.matchAll(/_fire\('([\w.]+)'/g)].map((m) => m[1]);
    assert.ok(ownFired.includes('subscribed'), ownFired.join());
    assert.deepEqual(ownFired.filter((name) => !declares(subscriptionMap, name)), []);
    const map = declaration('interface', 'WS4TXEventMap');
    const fired = [...script.replace(own, '').matchAll(/_fire\('([\w.]+)'/g)].map((m) => m[1]);
    const envelope = readFileSync(join(ROOT, 'ws4tx', 'envelope.py'), 'utf8');
    const server = [...envelope.matchAll(/^\w+_EVENT = "(ws4tx\.\w+)"/gm)].map((m) => m[1]);
    assert.ok(fired.includes('recovered') && server.includes('ws4tx.dropped'),
              `${fired} ${server}`);
    const events = [...new Set(fired.concat(server, ['message']))];
    assert.deepEqual(events.filter((name) => !declares(map, name)), []);
  });
});

const run = promisify(execFile);
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

describe('the tarball (npm pack)', () => {
  test('holds the builds, the types, the README, the LICENSE and package.json, and installs in a fresh '
       + 'project, which imports and requires it', async (t) => {
    const project = mkdtempSync(join(tmpdir(), 'ws4tx-consumer-'));
    t.after(() => rmSync(project, {recursive: true, force: true}));
    const {stdout} = await run(npm, ['pack', '--json', '--ignore-scripts',
                                     '--pack-destination', project],
                               {cwd: join(DIST, '..'), timeout: 60000});
    const [packed] = JSON.parse(stdout);
    assert.equal(packed.name, 'ws4tx');
    assert.deepEqual(packed.files.map((f) => f.path).sort(), [
      'LICENSE', 'README.md', 'dist/ws4tx.cjs', 'dist/ws4tx.d.cts', 'dist/ws4tx.d.mts', 'dist/ws4tx.js',
      'dist/ws4tx.mjs', 'package.json',
    ]);
    writeFileSync(join(project, 'package.json'), '{"name": "consumer", "private": true}');
    await run(npm, ['install', '--offline', '--no-audit', '--no-fund', join(project, packed.filename)],
              {cwd: project, timeout: 60000});
    const script = `
      import {WS4TX, connect} from 'ws4tx';
      import {createRequire} from 'node:module';
      const required = createRequire(import.meta.url)('ws4tx');
      console.log(JSON.stringify({
        esm: typeof WS4TX, connect: typeof connect, cjs: Object.keys(required).sort(),
        subprotocol: WS4TX.SUBPROTOCOL, globals: typeof globalThis.WS4TX}));`;
    const result = await run(process.execPath, ['--input-type=module', '-e', script],
                             {cwd: project, timeout: 60000});
    assert.deepEqual(JSON.parse(result.stdout), {
      esm: 'function', connect: 'function',
      cjs: ['AckError', 'SUBPROTOCOL', 'WS4Redis', 'WS4TX', 'connect'],
      subprotocol: 'ws4tx.v1', globals: 'undefined',
    });
  });
});
