// The pages of the render race (render_race.py): the real ws4tx.js client, run from its
// source (ws4tx/static/ws4tx/ws4tx.js, as js/build.mjs makes its modules) on the `ws` of
// js/node_modules (`npm ci` in js/). Driven by render_race.py over stdin and stdout, one
// JSON object a line:
//
//   in:  {"do": "page", "phase", "page", "url", "positions", "delay", "stateLatency"}
//          a page rendered now with `positions`; its WS4TX opens `delay` s later, with
//          `positions` and a getState that asks render_race.py for the state
//        {"do": "state", "phase", "page", "positions"}  the state getState asked for,
//          settled `stateLatency` s later (the page applying it)
//        {"do": "end", "phase", "last", "timeout"}  the last sequence number published:
//          once every page applied it (or `timeout` s passed) the phase is summed up
//   out: {"state": {"phase", "page"}}  a page's getState() was called
//        {"result": {...}}             a phase's figures (close of its pages)
//
// Every message is its sequence number, equal to its offset on the channel (a channel of
// its own per phase).
import {createRequire} from 'node:module';
import {createInterface} from 'node:readline';
import vm from 'node:vm';
import {readFileSync} from 'node:fs';
import {parts, SOURCE} from '../js/build.mjs';

const require = createRequire(new URL('../js/package.json', import.meta.url));
let WebSocket;
try {
  WebSocket = require('ws');
} catch {
  process.stderr.write('render_race.mjs: `ws` is missing: run `npm ci` in js/\n');
  process.exit(2);
}
const {WS4TX} = vm.runInThisContext(`(${parts(readFileSync(SOURCE, 'utf8')).factory})`,
                                    {filename: SOURCE})(globalThis);

const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
/** phase -> {pages: Map(page -> Page), end: {last, resolve} | null} */
const phases = new Map();

class Page {
  constructor(phase, index, url, positions, delay, stateLatency) {
    this.phase = phase;
    this.index = index;
    [this.channel] = Object.keys(positions);
    this.rendered = positions[this.channel].offset;
    this.delay = delay;
    this.stateLatency = stateLatency;
    this.counts = new Map();         // sequence number -> times applied
    this.verdicts = [];
    this.stateCalls = 0;
    this.stateOffset = null;          // the offset of the state getState settled with
    this.settled = false;
    this.appliedBeforeState = 0;      // messages applied while a getState was unsettled
    this.appliedBeforeVerdict = 0;
    this.arrivedWhilePending = 0;     // frames that reached the socket meanwhile
    this.last = null;
    this.openedAt = null;
    this.verdictAfter = null;         // ms from the WS4TX's creation to its first verdict
    this.done = null;
    this.client = null;
    this.timer = setTimeout(() => this.open(url, positions), delay * 1000);
  }

  open(url, positions) {
    this.timer = null;
    const page = this;
    /** Counts the frames that reach the socket while a getState is unsettled (the live
     *  messages ws4tx.js must hold): its listener runs before ws4tx.js's onmessage. */
    class Watched extends WebSocket {
      constructor(address, protocols) {
        super(address, protocols);
        this.on('message', (data, isBinary) => {
          if (!isBinary && page.stateCalls > 0 && !page.settled) page.arrivedWhilePending++;
        });
      }
    }
    this.openedAt = performance.now();
    this.client = new WS4TX(url, {WebSocket: Watched, positions,
                                  getState: () => this.getState(), minDelay: 100,
                                  maxDelay: 1000});
    this.client.on('message', (m) => this.apply(Number(m)));
    this.client.on('recovered', (verdict) => {
      if (this.verdicts.length === 0) this.verdictAfter = performance.now() - this.openedAt;
      this.verdicts.push(verdict);
    });
  }

  getState() {
    this.stateCalls++;
    this.settled = false;
    say({state: {phase: this.phase, page: this.index}});
    return new Promise((resolve) => { this.resolveState = resolve; });
  }

  stateArrived(positions) {
    setTimeout(() => {
      this.stateOffset = positions[this.channel].offset;
      this.settled = true;
      this.resolveState({positions});
    }, this.stateLatency * 1000);
  }

  apply(seq) {
    if (this.stateCalls > 0 && !this.settled) this.appliedBeforeState++;
    if (this.verdicts.length === 0) this.appliedBeforeVerdict++;
    this.counts.set(seq, (this.counts.get(seq) || 0) + 1);
    if (this.done && seq === this.last) this.done();
  }

  /** Resolves once the last message was applied. */
  finished(last) {
    this.last = last;
    if (this.counts.has(last)) return Promise.resolve();
    return new Promise((resolve) => { this.done = resolve; });
  }

  /** What this page applied, against what it had to. */
  figures() {
    // After a getState the state covers up to its offset; before it, the rendered page did.
    const base = this.stateOffset ?? this.rendered;
    let once = 0, gaps = 0, duplicates = 0, stale = 0, foreign = 0;
    for (let seq = base + 1; seq <= this.last; seq++) {
      const n = this.counts.get(seq) || 0;
      if (n === 1) once++;
      else if (n === 0) gaps++;
    }
    for (const [seq, n] of this.counts) {
      if (n > 1) duplicates += n - 1;
      if (seq <= base) stale += n;
      if (!(seq >= 1 && seq <= this.last)) foreign += n;
    }
    const verdict = this.verdicts[0] || null;
    return {
      opened: this.client !== null, afterRendered: this.last - this.rendered,
      expected: this.last - base, once, gaps, duplicates, stale, foreign,
      stateCalls: this.stateCalls, coveredByState: this.stateOffset === null ? 0 : this.stateOffset - this.rendered,
      appliedBeforeState: this.appliedBeforeState, appliedBeforeVerdict: this.appliedBeforeVerdict,
      arrivedWhilePending: this.arrivedWhilePending,
      recoveredMessages: verdict && verdict.channels && verdict.channels[this.channel]
        ? verdict.channels[this.channel].messages || 0 : 0,
      verdicts: this.verdicts.length, delay: this.delay, verdictAfter: this.verdictAfter,
      recovered: verdict ? verdict.recovered : null,
      reason: verdict && verdict.recovered === false ? String(verdict.reason) : null,
      done: this.counts.has(this.last),
    };
  }

  close() {
    if (this.timer) clearTimeout(this.timer);
    if (this.client) this.client.close();
  }
}

function phase(name) {
  if (!phases.has(name)) phases.set(name, {pages: new Map()});
  return phases.get(name);
}

function round3(x) { return x < 0 || x >= 1e9 ? null : Math.round(x * 1000) / 1000; }

function quantile(values, q) {
  const known = values.filter((v) => v !== null).sort((a, b) => a - b);
  if (!known.length) return null;
  return Math.round(known[Math.min(known.length - 1, Math.floor(q * known.length))]);
}

function sum(rows, key) { return rows.reduce((total, row) => total + row[key], 0); }

async function end(name, last, timeout) {
  const {pages} = phase(name);
  let timer;
  const late = new Promise((resolve) => { timer = setTimeout(resolve, timeout * 1000); });
  await Promise.race([Promise.all([...pages.values()].map((p) => p.finished(last))), late]);
  clearTimeout(timer);
  const rows = [...pages.values()].map((p) => p.figures());
  for (const p of pages.values()) p.close();
  phases.delete(name);
  const expected = sum(rows, 'expected');
  const once = sum(rows, 'once');
  const reasons = {};
  for (const row of rows) if (row.reason !== null) reasons[row.reason] = (reasons[row.reason] || 0) + 1;
  say({result: {
    phase: name, pages: rows.length, opened: rows.filter((r) => r.opened).length,
    pages_that_applied_the_last: rows.filter((r) => r.done).length, last,
    messages_after_rendered: sum(rows, 'afterRendered'),
    messages_covered_by_state: sum(rows, 'coveredByState'),
    messages_to_apply: expected, applied_exactly_once: once,
    applied_exactly_once_share: expected ? Number((once / expected).toFixed(6)) : null,
    duplicates: sum(rows, 'duplicates'), gaps: sum(rows, 'gaps'),
    applied_at_or_before_base: sum(rows, 'stale'), not_published: sum(rows, 'foreign'),
    recovered_true: rows.filter((r) => r.recovered === true).length,
    recovered_false: rows.filter((r) => r.recovered === false).length,
    no_verdict: rows.filter((r) => r.verdicts === 0).length,
    reasons,
    // The delays (render to connect) of the pages that recovered and of those that did not.
    recovered_delay_max_s: round3(Math.max(-1, ...rows.filter((r) => r.recovered === true).map((r) => r.delay))),
    not_recovered_delay_min_s: round3(Math.min(1e9, ...rows.filter((r) => r.recovered === false).map((r) => r.delay))),
    verdict_after_open_ms_p50: quantile(rows.map((r) => r.verdictAfter), 0.5),
    verdict_after_open_ms_max: quantile(rows.map((r) => r.verdictAfter), 1),
    getstate_calls: sum(rows, 'stateCalls'),
    pages_by_getstate_calls: rows.reduce((by, r) => ({...by, [r.stateCalls]: (by[r.stateCalls] || 0) + 1}), {}),
    recovered_messages: sum(rows, 'recoveredMessages'),
    recovered_messages_max: Math.max(0, ...rows.map((r) => r.recoveredMessages)),
    frames_arrived_while_state_pending: sum(rows, 'arrivedWhilePending'),
    applied_before_state: sum(rows, 'appliedBeforeState'),
    applied_before_verdict: sum(rows, 'appliedBeforeVerdict'),
  }});
}

const lines = createInterface({input: process.stdin});
lines.on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  if (command.do === 'page') {
    phase(command.phase).pages.set(command.page, new Page(
      command.phase, command.page, command.url, command.positions, command.delay,
      command.stateLatency));
  } else if (command.do === 'state') {
    phase(command.phase).pages.get(command.page).stateArrived(command.positions);
  } else if (command.do === 'end') {
    end(command.phase, command.last, command.timeout).catch((error) => {
      process.stderr.write(`${error.stack}\n`);
      process.exit(1);
    });
  }
});
lines.on('close', () => process.exit(0));
