#!/usr/bin/env node
// Soak client: the official TypeScript MCP SDK v1 calling one tool in a loop through tether.
//
// Used by scripts/soak, while it kills upstreams and tether itself. One session at a time, kept
// across failures and replaced only when tether answers that it is gone. Every call has a
// deadline. Output: a JSON line every --report seconds and at the end, with the same counters as
// soak_client.py (ok, error, hung, wrong, sessions, sessions_lost, errors).
//
//   node tests/peers/soak_client.mjs --url http://127.0.0.1:PORT/mcp [--everything] --seconds 600

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { randomUUID } from "node:crypto";

const args = { url: "", tool: "echo", everything: false, seconds: 60, callTimeout: 60, pause: 0.05, report: 60 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === "--everything") args.everything = true;
  else if (a === "--url") args.url = argv[++i];
  else if (a === "--tool") args.tool = argv[++i];
  else if (a === "--seconds") args.seconds = Number(argv[++i]);
  else if (a === "--call-timeout") args.callTimeout = Number(argv[++i]);
  else if (a === "--pause") args.pause = Number(argv[++i]);
  else if (a === "--report") args.report = Number(argv[++i]);
  else {
    console.error(`unknown argument ${a}`);
    process.exit(2);
  }
}

const stats = { ok: 0, error: 0, hung: 0, wrong: 0, sessions: 0, sessions_lost: 0, connect_error: 0 };
const errors = new Map();
const count = (label) => errors.set(label, (errors.get(label) ?? 0) + 1);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const report = () => {
  const top = [...errors.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8);
  console.log(JSON.stringify({ client: "ts", url: args.url, ...stats, errors: Object.fromEntries(top) }));
};
const deadline = (p, ms) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(Object.assign(new Error("deadline"), { hung: true })), ms))]);
const expected = (msg) => (args.everything ? `Echo: ${msg}` : msg);
const textOf = (r) => (r?.content ?? []).find((c) => typeof c.text === "string")?.text ?? "";

const end = Date.now() + args.seconds * 1000;
let nextReport = Date.now() + args.report * 1000;
while (Date.now() < end) {
  stats.sessions++;
  const client = new Client({ name: "tether-soak-ts", version: "0.1.0" });
  const transport = new StreamableHTTPClientTransport(new URL(args.url));
  try {
    await deadline(client.connect(transport, { timeout: args.callTimeout * 1000 }), args.callTimeout * 1000);
  } catch (e) {
    stats.connect_error++;
    count(`connect: ${e?.code ?? e?.name ?? "error"}`);
    await client.close().catch(() => {});
    await sleep(500);
    continue;
  }
  while (Date.now() < end) {
    const msg = `soak ${randomUUID().slice(0, 12)}`;
    try {
      const r = await deadline(
        client.callTool({ name: args.tool, arguments: { message: msg } }, undefined, { timeout: args.callTimeout * 1000 }),
        args.callTimeout * 1000 + 1000,
      );
      if (textOf(r) === expected(msg)) stats.ok++;
      else if (r?.isError) {
        stats.error++;
        count(`tool error: ${textOf(r).slice(0, 60)}`);
      } else {
        stats.wrong++;
        count(`wrong: ${textOf(r).slice(0, 60)}`);
      }
    } catch (e) {
      if (e?.hung || e?.code === -32001) {
        stats.hung++;
        console.error(JSON.stringify({ hung_at: new Date().toISOString(), message: msg }));
      } else {
        stats.error++;
        const s = String(e);
        count(e?.code !== undefined ? `code ${e.code}` : s.slice(0, 60));
        if (/404|not found|session terminated/i.test(s)) {
          stats.sessions_lost++;
          break;
        }
        await sleep(100);
      }
    }
    if (Date.now() >= nextReport) {
      report();
      nextReport += args.report * 1000;
    }
    await sleep(args.pause * 1000);
  }
  await client.close().catch(() => {});
}
report();
process.exit(0);
