#!/usr/bin/env node
// The official TypeScript SDK v2 client (@modelcontextprotocol/client 2.4.0) as a 2026-07-28
// client of `tether serve`, in front of an upstream of either era. The same steps, upstream
// profiles and kill points as tests/peers/modern_front_client.py (its docstring lists them):
//
//   node tests/peers/modern_front_client.mjs --url URL --mode pin|auto
//       [--upstream everything|fixture|modern] [--known-gap CHECK]...
//       [--request-timeout 30] [--step-timeout 60] [--kill-timeout 90] [--scenario-timeout 240]
//
// Prints one JSON line per check ({"check", "ok", "detail"}), {"skip", "reason"} for a check the
// upstream cannot be asked (never counted as passed), a {"event":"kill-point","name"} line where
// the harness kills the upstream (then writes `go` on stdin), and last `N passed, N failed`;
// exits 0 when all passed.

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";

const LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel";

// What each step asks of one upstream (see modern_front_client.py's UPSTREAMS).
const UPSTREAMS = {
  everything: {
    call: ["echo", (n) => ({ message: `hi-${n}` }), (n, t) => t.includes(n)],
    elicit: "trigger-elicitation-request",
    elicitContent: (n) => ({ name: `ts-${n}`, check: true }),
    elicitExpect: (n) => `ts-${n}`,
    long: ["trigger-long-running-operation", { duration: 3, steps: 3 }],
    resource: "demo://resource/static/document/architecture.md",
    bump: "toggle-subscriber-updates",
    toggles: true,
    log: null,
  },
  fixture: {
    call: ["test_simple_text", () => ({}), (_n, t) => t.includes("simple text response")],
    elicit: "test_input_required_result_elicitation",
    elicitContent: (n) => ({ name: `ts-${n}` }),
    elicitExpect: (n) => `Hello, ts-${n}!`,
    long: ["tether_slow", { seconds: 3 }],
    resource: "test://static-text",
    bump: "tether_bump",
    toggles: false,
    log: ["test_logging_tool", "info", (got) => got.length === 2 && got.every((g) => g.includes("Tool execution"))],
  },
  modern: {
    call: ["echo", (n) => ({ message: `hi-${n}` }), (n, t) => t.includes(n)],
    elicit: "greet",
    elicitContent: (n) => ({ name: `ts-${n}` }),
    elicitExpect: (n) => `Hello, ts-${n}!`,
    long: ["slow", { seconds: 3 }],
    resource: "test://counter",
    bump: "bump",
    toggles: false,
    log: ["log_levels", "warning", (got) => JSON.stringify([...got].sort()) === JSON.stringify(["at error", "at warning"])],
  },
};

function parseArgs(argv) {
  const a = { url: null, mode: "pin", upstream: "everything", knownGap: [], requestTimeout: 30, stepTimeout: 60, killTimeout: 90, scenarioTimeout: 240 };
  for (let i = 0; i < argv.length; i++) {
    const v = () => argv[++i];
    switch (argv[i]) {
      case "--url": a.url = v(); break;
      case "--mode": a.mode = v(); break;
      case "--upstream": a.upstream = v(); break;
      case "--known-gap": a.knownGap.push(v()); break;
      case "--request-timeout": a.requestTimeout = Number(v()); break;
      case "--step-timeout": a.stepTimeout = Number(v()); break;
      case "--kill-timeout": a.killTimeout = Number(v()); break;
      case "--scenario-timeout": a.scenarioTimeout = Number(v()); break;
      default:
        process.stderr.write(`unknown argument ${argv[i]}\n`);
        process.exit(2);
    }
  }
  if (!a.url || !UPSTREAMS[a.upstream]) {
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
const logs = [];

function record(name, ok, detail) {
  console.log(JSON.stringify({ check: name, ok, detail }));
  if (ok) passed++;
  else failed++;
}

function skip(name, reason) {
  console.log(JSON.stringify({ skip: name, reason }));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitUntil(pred, ms) {
  const t0 = Date.now();
  while (!pred() && Date.now() - t0 < ms) await sleep(50);
  return pred();
}

function within(ms, p, what) {
  let t;
  const timer = new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms); });
  return Promise.race([p, timer]).finally(() => clearTimeout(t));
}

async function step(name, fn) {
  let ok, detail;
  try {
    [ok, detail] = await within(args.stepTimeout * 1000, fn(), name);
  } catch (e) {
    [ok, detail] = [false, String(e?.stack ?? e)];
  }
  if (args.knownGap.includes(name.split(":").slice(1).join(":"))) {
    // A listed gap is reported as such while it fails, and fails the run once it passes.
    if (ok) record(name, false, `listed with --known-gap but passed, take it off: ${JSON.stringify(detail)}`);
    else skip(name, `known gap: ${JSON.stringify(detail).slice(0, 300)}`);
    return;
  }
  record(name, ok, detail);
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
  const up = UPSTREAMS[args.upstream];
  const mode = args.mode === "auto" ? "auto" : { pin: "2026-07-28" };
  const client = new Client(
    { name: "tether-modern-front-ts", version: "0.1.0" },
    { capabilities: { elicitation: {} }, versionNegotiation: { mode } },
  );
  client.setRequestHandler("elicitation/create", async (req) => {
    elicited.push(req.params);
    return { action: "accept", content: up.elicitContent(nonce) };
  });
  client.setNotificationHandler("notifications/resources/updated", (n) => {
    updates.push(n.params?.uri);
  });
  client.setNotificationHandler("notifications/message", (n) => {
    logs.push(String(n.params?.data));
  });
  const opts = { timeout: args.requestTimeout * 1000 };
  await within(args.stepTimeout * 1000, client.connect(new StreamableHTTPClientTransport(new URL(args.url))), "connect");
  const call = async () => {
    const [name, argsOf, good] = up.call;
    const r = await client.callTool({ name, arguments: argsOf(nonce) }, opts);
    return [!r.isError && good(nonce, text(r)), text(r).slice(0, 200)];
  };
  const bump = () => client.callTool({ name: up.bump, arguments: {} }, opts);
  await step("modern:version", async () => {
    const v = client.getNegotiatedProtocolVersion();
    return [v === "2026-07-28", v];
  });
  await step("modern:list", async () => {
    const names = (await client.listTools({}, opts)).tools.map((t) => t.name);
    return [[up.call[0], up.elicit, up.long[0], up.bump].every((t) => names.includes(t)), names];
  });
  await step("modern:call", call);
  await step("modern:elicitation", async () => {
    const before = elicited.length;
    const r = await client.callTool({ name: up.elicit, arguments: {} }, opts);
    return [elicited.length === before + 1 && text(r).includes(up.elicitExpect(nonce)) && !r.isError, text(r).slice(0, 300)];
  });
  if (up.log) {
    await step("modern:log-level", async () => {
      const [tool, level, good] = up.log;
      const detail = {};
      for (const [asked, expectSome] of [[level, true], ["emergency", false]]) {
        logs.length = 0;
        const r = await client.callTool({ name: tool, arguments: {}, _meta: { [LOG_LEVEL_KEY]: asked } }, opts);
        if (expectSome) await waitUntil(() => good(logs), 5000);
        detail[asked] = { result: text(r).slice(0, 80), logs: [...logs] };
        if (r.isError || !(expectSome ? good(logs) : logs.length === 0)) return [false, detail];
      }
      return [true, detail];
    });
  } else {
    skip("modern:log-level", "server-everything logs on the session, not per request: a 2026-07-28 request has nothing to opt into");
  }
  await step("modern:resource-updated", async () => {
    updates.length = 0;
    const sub = await client.listen({ resourceSubscriptions: [up.resource] }, opts);
    try {
      await bump();
      await waitUntil(() => updates.includes(up.resource), 15000);
    } finally {
      if (up.toggles) await bump();
      await sub.close();
    }
    return [updates.includes(up.resource), { honored: sub.honoredFilter, updates }];
  });
  await kill_point("between");
  await step("between:next-call", call);
  const inFlight = within(
    args.stepTimeout * 1000,
    client.callTool({ name: up.long[0], arguments: up.long[1] }, opts),
    "the long call",
  ).then((r) => [!r.isError, text(r).slice(0, 200)], (e) => [false, String(e)]);
  await sleep(1000);
  await kill_point("during");
  const [ok, detail] = await inFlight;
  record("during:in-flight", ok, detail);
  await step("during:next-call", call);
  await client.close();
}

try {
  await within(args.scenarioTimeout * 1000, main(), "the scenario");
} catch (e) {
  record("session", false, String(e?.stack ?? e));
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
