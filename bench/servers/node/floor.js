// The Node fan-out floor of the ws4tx benchmark suite: npm `ws`, no Redis.
//
// What a Node developer would write: a `ws` WebSocketServer (no permessage-deflate, its
// default), clients grouped by URL path, and the ceiling's local trigger (a TCP port taking
// lines `<channel path> <payload>\n`, written by bench/publisher.py). Each payload is
// made a Buffer once and sent to every client of its path with `client.send()` (ws frames
// it per client: a 2-byte header, the payload not copied).
//
// Usage: node floor.js WS_PORT TRIGGER_PORT
"use strict";

const net = require("net");
const { WebSocketServer, WebSocket } = require("ws");

const [wsPort, triggerPort] = process.argv.slice(2).map(Number);
const channels = new Map(); // path -> Set of clients

const wss = new WebSocketServer({ host: "127.0.0.1", port: wsPort, backlog: 4096,
                                  perMessageDeflate: false, clientTracking: false });
wss.on("connection", (ws, request) => {
  const path = request.url;
  let members = channels.get(path);
  if (!members) channels.set(path, (members = new Set()));
  members.add(ws);
  ws.on("close", () => {
    members.delete(ws);
    if (!members.size && channels.get(path) === members) channels.delete(path);
  });
  ws.on("error", () => {});
});

function broadcast(path, payload) {
  const members = channels.get(path);
  if (!members) return;
  for (const ws of members) {
    if (ws.readyState === WebSocket.OPEN) ws.send(payload, { binary: false });
  }
}

net.createServer((sock) => {
  sock.setNoDelay(true);
  let buffer = Buffer.alloc(0);
  sock.on("data", (data) => {
    buffer = buffer.length ? Buffer.concat([buffer, data]) : data;
    let nl;
    while ((nl = buffer.indexOf(10)) !== -1) {
      const line = buffer.subarray(0, nl);
      buffer = buffer.subarray(nl + 1);
      const sp = line.indexOf(32);
      if (sp !== -1) broadcast(line.subarray(0, sp).toString(), line.subarray(sp + 1));
    }
  });
  sock.on("error", () => {});
}).listen(triggerPort, "127.0.0.1", () => {
  process.stderr.write(`floor-node: WebSocket on ${wsPort}, trigger on ${triggerPort} ` +
                       `(node ${process.version}, ws ${require("ws/package.json").version})\n`);
});
