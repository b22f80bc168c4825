#!/usr/bin/env node
// The official TypeScript SDK client (@modelcontextprotocol/sdk 1.x, handshake era only) driving
// `tether bridge` over stdio, as a desktop client would (`--command`), or `tether serve` over
// Streamable HTTP (`--url`), in front of a remote that speaks ONLY MCP 2026-07-28
// (tests/peers/modern_server.py). The same steps and kill points as
// tests/peers/modern_bridge_client.py, so that both official clients are checked:
//
//   node tests/peers/modern_bridge_client.mjs --command "<tether> bridge <URL> …"
//   node tests/peers/modern_bridge_client.mjs --url http://127.0.0.1:PORT/mcp
//       [--request-timeout 30] [--step-timeout 60] [--kill-timeout 90] [--scenario-timeout 300]
//
// Prints one JSON line per check ({"check", "ok", "detail"}), a {"event":"kill-point","name"}
// line where the test must kill and restart the remote (then write `go` on stdin), and last
// `N passed, N failed`; exits 0 when all passed.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  McpError,
  ResourceUpdatedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";

const LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

function parseArgs(argv) {
  const a = { command: null, url: null, requestTimeout: 30, stepTimeout: 60, killTimeout: 90, scenarioTimeout: 300 };
  for (let i = 0; i < argv.length; i++) {
    const v = () => argv[++i];
    switch (argv[i]) {
      case "--command": a.command = v(); break;
      case "--url": a.url = v(); break;
      case "--request-timeout": a.requestTimeout = Number(v()); break;
      case "--step-timeout": a.stepTimeout = Number(v()); break;
      case "--kill-timeout": a.killTimeout = Number(v()); break;
      case "--scenario-timeout": a.scenarioTimeout = Number(v()); break;
      default:
        process.stderr.write(`unknown argument ${argv[i]}\n`);
        process.exit(2);
    }
  }
  if (!a.command === !a.url) {
    process.stderr.write("usage: modern_bridge_client.mjs --command 'TETHER bridge URL …' | --url URL\n");
    process.exit(2);
  }
  return a;
}

const args = parseArgs(process.argv.slice(2));
const nonce = randomUUID().slice(0, 6);
let passed = 0;
let failed = 0;
const logs = [];
const updates = [];
const elicited = [];

function record(name, ok, detail) {
  console.log(JSON.stringify({ check: name, ok, detail }));
  if (ok) passed++;
  else failed++;
}

function withTimeout(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timeout after ${seconds}s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function step(name, fn) {
  try {
    const [ok, detail] = await withTimeout(fn(), args.stepTimeout, name);
    record(name, ok, detail);
  } catch (e) {
    record(name, false, e instanceof McpError ? { code: e.code, message: e.message, data: e.data } : String(e));
  }
}

// stdin carries `go` lines from the test.
const stdinLines = [];
let lineWaiter = null;
createInterface({ input: process.stdin }).on("line", (line) => {
  stdinLines.push(line.trim());
  lineWaiter?.();
});

async function killPoint(name) {
  console.log(JSON.stringify({ event: "kill-point", name }));
  await withTimeout(
    new Promise((resolve) => {
      const check = () => {
        if (stdinLines.includes("go")) {
          stdinLines.splice(stdinLines.indexOf("go"), 1);
          lineWaiter = null;
          resolve();
        }
      };
      lineWaiter = check;
      check();
    }),
    args.killTimeout,
    `go after kill-point ${name}`,
  );
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitUntil(pred, seconds) {
  const end = Date.now() + seconds * 1000;
  while (!pred() && Date.now() < end) await sleep(50);
  return pred();
}

const textOf = (r) => (r.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");

function splitCommand(line) {
  // The test passes paths that need no quoting; split on whitespace like a shell would then.
  return line.trim().split(/\s+/);
}

const client = new Client({ name: "tether-modern-ts-driver", version: "0.1.0" }, { capabilities: { elicitation: {} } });
client.setRequestHandler(ElicitRequestSchema, async (req) => {
  elicited.push(req.params);
  return { action: "accept", content: { name: `ts-${nonce}` } };
});
client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
  logs.push(n.params);
});
client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
  updates.push(n.params.uri);
});
const transportErrors = [];
client.onerror = (e) => transportErrors.push(String(e));

const callOpts = () => ({ timeout: args.requestTimeout * 1000, resetTimeoutOnProgress: true });

async function echo() {
  const message = `modern ${nonce} ${randomUUID().slice(0, 4)}`;
  const t = Date.now();
  const r = await client.callTool({ name: "echo", arguments: { message } }, undefined, callOpts());
  return [textOf(r) === `Echo: ${message}` && !r.isError, { text: textOf(r), elapsed_s: (Date.now() - t) / 1000 }];
}

async function connect() {
  const info = client.getServerVersion();
  const instructions = client.getInstructions();
  const ok = info?.name === "modern-test-server" && instructions === "A modern-only test server for tether.";
  return [ok, { info, instructions }];
}

async function tools() {
  const listed = await client.listTools(undefined, callOpts());
  const names = listed.tools.map((t) => t.name).sort();
  const deploy = listed.tools.find((t) => t.name === "deploy");
  const header = deploy?.inputSchema?.properties?.region?.["x-mcp-header"] === "Region";
  const want = ["echo", "deploy", "slow", "slow_unsafe", "log_levels", "greet", "bump"];
  return [want.every((n) => names.includes(n)) && header, { tools: names, x_mcp_header_kept: header }];
}

async function deploy() {
  const out = {};
  for (const region of ["eu-west-1", "zürich ", "=?base64?x?="]) {
    const r = await client.callTool({ name: "deploy", arguments: { region, version: "7" } }, undefined, callOpts());
    out[region] = textOf(r);
    if (r.isError || out[region] !== `deployed 7 to ${region}`) return [false, out];
  }
  return [true, out];
}

async function read() {
  const r = await client.readResource({ uri: "test://static" }, callOpts());
  const text = r.contents?.[0]?.text;
  return [text === "static text", { text }];
}

async function logLevel() {
  const mark = logs.length;
  const r = await client.callTool({ name: "log_levels", arguments: {} }, undefined, callOpts());
  await waitUntil(() => logs.length > mark, 2);
  await sleep(300);
  const got = logs.slice(mark).map((p) => p.level);
  const below = got.filter((lv) => LEVELS.indexOf(lv) < LEVELS.indexOf("warning"));
  return [textOf(r) === "logged" && got.includes("warning") && got.includes("error") && below.length === 0, { levels: got }];
}

async function subscription() {
  const seen = () => updates.filter((u) => u === "test://counter").length;
  const mark = seen();
  const r = await client.callTool({ name: "bump", arguments: {} }, undefined, callOpts());
  const arrived = await waitUntil(() => seen() > mark, 20);
  return [arrived && textOf(r).startsWith("count "), { bump: textOf(r), update_arrived: arrived }];
}

async function greet() {
  const r = await client.callTool({ name: "greet", arguments: {} }, undefined, callOpts());
  return [textOf(r) === `Hello, ts-${nonce}!` && elicited.length >= 1, { text: textOf(r), asked: elicited.length }];
}

// A call in flight (its progress shows it reached the server) while the remote is killed.
async function inFlight(point, tool, expectOk) {
  let started;
  const progressed = new Promise((r) => (started = r));
  const result = {};
  const t = Date.now();
  const call = client
    .callTool({ name: tool, arguments: { seconds: 3 } }, undefined, { ...callOpts(), onprogress: () => started() })
    .then((r) => {
      result.text = textOf(r);
      result.isError = r.isError ?? false;
    })
    .catch((e) => {
      result.error = e instanceof McpError ? { code: e.code, message: e.message, data: e.data } : { message: String(e) };
    })
    .finally(() => started());
  await progressed;
  await killPoint(point);
  await call;
  result.elapsed_s = (Date.now() - t) / 1000;
  if (expectOk) return [result.text === "slow done" && !result.isError, result];
  return [result.error?.code === -32011 && result.error?.data?.reason === "upstream_restarted", result];
}

async function run() {
  let transport;
  if (args.url) {
    transport = new StreamableHTTPClientTransport(new URL(args.url));
  } else {
    const [command, ...rest] = splitCommand(args.command);
    transport = new StdioClientTransport({ command, args: rest, env: process.env, stderr: "inherit" });
  }
  await withTimeout(client.connect(transport, callOpts()), args.stepTimeout, "connect");
  await step("connect", connect);
  await step("tools", tools);
  await step("echo", echo);
  await step("x-mcp-header", deploy);
  await step("resources-read", read);
  await step("set-level", async () => {
    await client.setLoggingLevel("warning", callOpts());
    return [true, null];
  });
  await step("log-level", logLevel);
  await step("subscribe", async () => {
    await client.subscribeResource({ uri: "test://counter" }, callOpts());
    return [true, null];
  });
  await step("subscription", subscription);
  await step("elicitation", greet);

  await killPoint("between");
  await step("between:echo", echo);
  await step("between:log-level", logLevel);
  await step("between:subscription", subscription);
  await step("between:x-mcp-header", deploy);
  await step("between:elicitation", greet);

  await step("during:safe-call", () => inFlight("during", "slow", true));
  await step("during:echo", echo);
  await step("during-unsafe:call", () => inFlight("during-unsafe", "slow_unsafe", false));
  await step("during-unsafe:echo", echo);

  await killPoint("down");
  await step("down:call-while-down", async () => {
    const [ok, d] = await echo();
    d.waited_for_the_remote = d.elapsed_s >= 1.0;
    return [ok && d.waited_for_the_remote, d];
  });
  await step("down:read", read);
  await step("down:subscription", subscription);
  await step("transport-clean", async () => {
    await client.ping(callOpts());
    return [transportErrors.length === 0, { transport_errors: transportErrors.slice(0, 5) }];
  });
  await client.close();
}

try {
  await withTimeout(run(), args.scenarioTimeout, "scenario");
} catch (e) {
  record("scenario", false, String(e));
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
