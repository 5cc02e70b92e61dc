// The real NATS WebSocket client against natsgate's [websocket] listener; run by
// tests/websocket.rs (and bench/ws/). `ws` is the WebSocket implementation (Node 20 has none).
//
//   node client.mjs work URL USER PASS [CA_FILE]   pub/sub of a 512 KiB payload, 1,000 requests
//   node client.mjs auth URL USER PASS [CA_FILE]   expects the connect to be refused; prints why
//   node client.mjs bench URL USER PASS N SIZE     N publishes of SIZE bytes, then N requests
import { readFileSync } from "node:fs";
import WebSocket from "ws";
import { wsconnect } from "@nats-io/nats-core";

const [mode, url, user, pass, ...rest] = process.argv.slice(2);
const ca = mode === "bench" ? undefined : rest[0];
const wsFactory = (u) =>
  Promise.resolve({
    socket: new WebSocket(u, ca ? { ca: readFileSync(ca) } : {}),
    encrypted: u.startsWith("wss:"),
  });
const options = { servers: url, user, pass, wsFactory, reconnect: false, timeout: 5000 };

function same(a, b) {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

async function work() {
  const nc = await wsconnect(options);
  const payload = new Uint8Array(512 * 1024).map((_, i) => (i * 31 + 7) & 0xff);
  const sub = nc.subscribe("ws.big", { max: 1 });
  await nc.flush();
  nc.publish("ws.big", payload);
  for await (const m of sub) {
    if (!same(m.data, payload)) throw new Error("the 512 KiB payload came back different");
  }
  console.log(`payload ${payload.length} ok`);

  const svc = nc.subscribe("ws.svc", { callback: (_, m) => m.respond(m.data) });
  await nc.flush();
  const started = Date.now();
  for (let i = 0; i < 1000; i++) {
    const data = new TextEncoder().encode(`req-${i}`);
    const r = await nc.request("ws.svc", data, { timeout: 5000 });
    if (!same(r.data, data)) throw new Error(`reply ${i} is not its request`);
  }
  console.log(`requests 1000 ok in ${Date.now() - started} ms`);
  svc.unsubscribe();
  await nc.drain();
}

async function auth() {
  try {
    const nc = await wsconnect(options);
    await nc.close();
  } catch (e) {
    console.log(`refused: ${e.message} ${e.cause?.message ?? ""}`);
    return;
  }
  throw new Error("a wrong password was accepted");
}

async function bench() {
  const n = Number(rest[0]);
  const size = Number(rest[1]);
  const nc = await wsconnect(options);
  const payload = new Uint8Array(size).fill(120);
  const sub = nc.subscribe("ws.bench.sink", { callback: () => {} });
  await nc.flush();
  let started = process.hrtime.bigint();
  for (let i = 0; i < n; i++) nc.publish("ws.bench.pub", payload);
  await nc.flush();
  const pubSecs = Number(process.hrtime.bigint() - started) / 1e9;
  sub.unsubscribe();
  const svc = nc.subscribe("ws.bench.svc", { callback: (_, m) => m.respond(m.data) });
  await nc.flush();
  const small = new Uint8Array(16);
  started = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await nc.request("ws.bench.svc", small, { timeout: 5000 });
  const reqSecs = Number(process.hrtime.bigint() - started) / 1e9;
  svc.unsubscribe();
  await nc.drain();
  console.log(JSON.stringify({ pub_msgs_per_s: n / pubSecs, pub_mib_per_s: (n * size) / pubSecs / 1048576, req_per_s: n / reqSecs }));
}

const modes = { work, auth, bench };
modes[mode]().then(
  () => process.exit(0),
  (e) => {
    console.error(`FAILED: ${e?.stack ?? e}`);
    process.exit(1);
  },
);
