#!/usr/bin/env node
// Soak client: the official TypeScript MCP SDK v1 calling one tool in a loop through tether.
//
// Used by scripts/soak, while it kills upstreams and tether itself. One session at a time, kept
// across failures and replaced only when tether answers that it is gone. Every call has a
// deadline. Output: a JSON line every --report seconds and at the end, with the same counters as
// soak_client.py (ok, error, hung, wrong, sessions, sessions_lost, errors), plus `sdk_hung`.
//
// A call without an answer by its deadline is told apart by what the SDK's transport did with
// the call's SSE stream (seen through the transport's `fetch` and the call's resumption tokens),
// and each one is logged on stderr with that evidence:
//
//   sdk_hung  the SDK itself left the call pending, with tether never asked again:
//             `gave_up`   the stream broke and the SDK's resume attempts (GET + Last-Event-ID;
//                         SDK 1.x makes 2, `retry` apart) all failed because tether was still
//                         down; it then stops and leaves the request to its own timeout;
//             `no_resume` the call's POST was answered with a stream that broke before it
//                         carried an event id, and SDK 1.x resumes a POST's stream only after
//                         one.
//   hung      anything else: tether was asked (a POST, or a resume it accepted) and did not
//             answer. tether promises this never happens.
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

const stats = { ok: 0, error: 0, hung: 0, sdk_hung: 0, wrong: 0, sessions: 0, sessions_lost: 0, connect_error: 0 };
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

// What the transport did, for the hung-call evidence: each call's POST (its outcome and
// content type), every GET that resumes a stream (its Last-Event-ID and outcome) and every
// stream break the SDK reports.
const wire = [];
const since = (t0) => wire.filter((w) => w.at >= t0);
const note = (w) => {
  wire.push(w);
  if (wire.length > 2000) wire.splice(0, 1000);
};
const at = () => Date.now();
const tracedFetch = async (url, init) => {
  const resume = init?.method === "GET" ? new Headers(init.headers).get("last-event-id") : null;
  // A call's own POST, known by its message (the `soak <uuid>` text is unique).
  const call = init?.method === "POST" ? /"message":"(soak [^"]+)"/.exec(String(init.body))?.[1] : undefined;
  try {
    const r = await fetch(url, init);
    if (resume) note({ at: at(), resume, status: r.status });
    if (call) note({ at: at(), post: call, status: r.status, type: r.headers.get("content-type") });
    return r;
  } catch (e) {
    const failed = String(e?.cause?.code ?? e?.message ?? e);
    if (resume) note({ at: at(), resume, failed });
    if (call) note({ at: at(), post: call, failed });
    throw e;
  }
};
const onTransportError = (e) => {
  const m = String(e?.message ?? e);
  if (/SSE stream disconnected|Maximum reconnection attempts/.test(m)) note({ at: at(), sdk: m.slice(0, 80) });
};

/// Why a call had no answer: "gave_up" / "no_resume" (the SDK's own), or "hung" (tether's).
function whyHung(t0, tokens, msg) {
  const seen = since(t0).filter((w) => w.post === undefined || w.post === msg);
  const broke = seen.some((w) => w.sdk?.startsWith("SSE stream disconnected"));
  const streamed = seen.some((w) => w.post === msg && w.type?.startsWith("text/event-stream"));
  if (tokens.length === 0) return { kind: broke && streamed ? "no_resume" : "hung", seen };
  const mine = seen.filter((w) => w.resume !== undefined && tokens.includes(w.resume));
  const accepted = mine.some((w) => w.status !== undefined && w.status < 300);
  if (broke && mine.length > 0 && !accepted) return { kind: "gave_up", seen };
  return { kind: "hung", seen };
}

const end = Date.now() + args.seconds * 1000;
let nextReport = Date.now() + args.report * 1000;
while (Date.now() < end) {
  stats.sessions++;
  const client = new Client({ name: "tether-soak-ts", version: "0.1.0" });
  client.onerror = onTransportError;
  const transport = new StreamableHTTPClientTransport(new URL(args.url), { fetch: tracedFetch });
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
    const t0 = at();
    const tokens = [];
    try {
      const r = await deadline(
        client.callTool({ name: args.tool, arguments: { message: msg } }, undefined, {
          timeout: args.callTimeout * 1000,
          onresumptiontoken: (t) => tokens.push(t),
        }),
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
      // -32001 here is the SDK's own RequestTimeout (tether's 404 arrives as an HTTP error).
      if (e?.hung || e?.code === -32001) {
        const why = whyHung(t0, tokens, msg);
        if (why.kind === "hung") stats.hung++;
        else {
          stats.sdk_hung++;
          count(`sdk_hung: ${why.kind}`);
        }
        const seen = why.seen.map((w) => ({ ...w, at: new Date(w.at).toISOString() }));
        console.error(
          JSON.stringify({ hung_at: new Date().toISOString(), started: new Date(t0).toISOString(), kind: why.kind, message: msg, event_ids: tokens, transport: seen }),
        );
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
