#!/usr/bin/env node
// The official TypeScript SDK v2 client (@modelcontextprotocol/client 2.4.0) as a 2026-07-28
// client of `tether serve`, whose upstream is handshake-era only (server-everything over stdio).
// The same steps and kill points as tests/peers/modern_front_client.py:
//
//   node tests/peers/modern_front_client.mjs --url URL --mode pin|auto
//       [--request-timeout 30] [--step-timeout 60] [--kill-timeout 90] [--scenario-timeout 240]
//
// Prints one JSON line per check ({"check", "ok", "detail"}), a {"event":"kill-point","name"} line
// where the harness kills the stdio child (then writes `go` on stdin), and last
// `N passed, N failed`; exits 0 when all passed.

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";

const URI = "demo://resource/static/document/architecture.md";

function parseArgs(argv) {
  const a = { url: null, mode: "pin", requestTimeout: 30, stepTimeout: 60, killTimeout: 90, scenarioTimeout: 240 };
  for (let i = 0; i < argv.length; i++) {
    const v = () => argv[++i];
    switch (argv[i]) {
      case "--url": a.url = v(); break;
      case "--mode": a.mode = v(); break;
      case "--request-timeout": a.requestTimeout = Number(v()); break;
      case "--step-timeout": a.stepTimeout = Number(v()); break;
      case "--kill-timeout": a.killTimeout = Number(v()); break;
      case "--scenario-timeout": a.scenarioTimeout = Number(v()); break;
      default:
        process.stderr.write(`unknown argument ${argv[i]}\n`);
        process.exit(2);
    }
  }
  if (!a.url) {
    process.stderr.write("usage: modern_front_client.mjs --url URL [--mode pin|auto]\n");
    process.exit(2);
  }
  return a;
}

const args = parseArgs(process.argv.slice(2));
const nonce = randomUUID().slice(0, 8);
let passed = 0;
let failed = 0;
const elicited = [];
const updates = [];

function record(name, ok, detail) {
  console.log(JSON.stringify({ check: name, ok, detail }));
  if (ok) passed++;
  else failed++;
}

function within(ms, p, what) {
  let t;
  const timer = new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms); });
  return Promise.race([p, timer]).finally(() => clearTimeout(t));
}

async function step(name, fn) {
  try {
    const [ok, detail] = await within(args.stepTimeout * 1000, fn(), name);
    record(name, ok, detail);
  } catch (e) {
    record(name, false, String(e?.stack ?? e));
  }
}

const lines = createInterface({ input: process.stdin });
const pending = [];
lines.on("line", (l) => pending.shift()?.(l));
function kill_point(name) {
  console.log(JSON.stringify({ event: "kill-point", name }));
  return within(args.killTimeout * 1000, new Promise((resolve) => pending.push(resolve)), `go after ${name}`);
}

const text = (r) => (r.content ?? []).map((c) => c.text ?? "").join(" ");

async function main() {
  const mode = args.mode === "auto" ? "auto" : { pin: "2026-07-28" };
  const client = new Client(
    { name: "tether-modern-front-ts", version: "0.1.0" },
    { capabilities: { elicitation: {} }, versionNegotiation: { mode } },
  );
  client.setRequestHandler("elicitation/create", async (req) => {
    elicited.push(req.params);
    return { action: "accept", content: { name: `ts-${nonce}`, check: true } };
  });
  client.setNotificationHandler("notifications/resources/updated", (n) => {
    updates.push(n.params?.uri);
  });
  const opts = { timeout: args.requestTimeout * 1000 };
  await within(args.stepTimeout * 1000, client.connect(new StreamableHTTPClientTransport(new URL(args.url))), "connect");
  const echo = async () => {
    const r = await client.callTool({ name: "echo", arguments: { message: `hi-${nonce}` } }, opts);
    return [!r.isError && text(r).includes(nonce), text(r)];
  };
  await step("modern:version", async () => {
    const v = client.getNegotiatedProtocolVersion();
    return [v === "2026-07-28", v];
  });
  await step("modern:list", async () => {
    const names = (await client.listTools({}, opts)).tools.map((t) => t.name);
    return [names.includes("echo") && names.includes("trigger-elicitation-request"), names];
  });
  await step("modern:call", echo);
  await step("modern:elicitation-input-required", async () => {
    const r = await client.callTool({ name: "trigger-elicitation-request", arguments: {} }, opts);
    return [elicited.length === 1 && text(r).includes(`ts-${nonce}`) && !r.isError, text(r).slice(0, 300)];
  });
  await step("modern:listen-resource-updated", async () => {
    const sub = await client.listen({ resourceSubscriptions: [URI] }, opts);
    try {
      await client.callTool({ name: "toggle-subscriber-updates", arguments: {} }, opts);
      const t0 = Date.now();
      while (!updates.includes(URI) && Date.now() - t0 < 15000) await new Promise((r) => setTimeout(r, 50));
    } finally {
      await client.callTool({ name: "toggle-subscriber-updates", arguments: {} }, opts);
      await sub.close();
    }
    return [updates.includes(URI), { honored: sub.honoredFilter, updates }];
  });
  await kill_point("between");
  await step("between:next-call", echo);
  const inFlight = within(
    args.stepTimeout * 1000,
    client.callTool({ name: "trigger-long-running-operation", arguments: { duration: 3, steps: 3 } }, opts),
    "the long call",
  ).then((r) => [!r.isError, text(r).slice(0, 200)], (e) => [false, String(e)]);
  await new Promise((r) => setTimeout(r, 1000));
  await kill_point("during");
  const [ok, detail] = await inFlight;
  record("during:in-flight", ok, detail);
  await step("during:next-call", echo);
  await client.close();
}

try {
  await within(args.scenarioTimeout * 1000, main(), "the scenario");
} catch (e) {
  record("session", false, String(e?.stack ?? e));
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
