#!/usr/bin/env node
// Smoke test for tests/peers/fixture.mjs (or anything serving the same fixture, e.g. tether
// in front of it), driven with the official TypeScript SDK client.
//
//   node tests/peers/fixture-check.mjs stdio    spawns `node fixture.mjs stdio` itself
//   node tests/peers/fixture-check.mjs URL      Streamable HTTP, e.g. http://127.0.0.1:3000/mcp
//
// Prints one line per check and exits 1 if any failed. Over HTTP it also checks that
// test_reconnection was answered after a resume (GET with Last-Event-ID).

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema
} from '@modelcontextprotocol/sdk/types.js';

const target = process.argv[2];
if (!target) {
  console.error('usage: node tests/peers/fixture-check.mjs stdio | URL');
  process.exit(2);
}
const here = path.dirname(fileURLToPath(import.meta.url));

let resumes = 0;
let transport;
if (target === 'stdio') {
  transport = new StdioClientTransport({
    command: process.execPath,
    args: [path.join(here, 'fixture.mjs'), 'stdio'],
    env: { ...process.env, FIXTURE_WATCH_MS: '200' },
    stderr: 'inherit'
  });
} else {
  transport = new StreamableHTTPClientTransport(new URL(target), {
    fetch: (url, init) => {
      const h = new Headers(init?.headers);
      if ((init?.method ?? 'GET') === 'GET' && h.get('last-event-id')) resumes++;
      return fetch(url, init);
    }
  });
}

const client = new Client(
  { name: 'tether-fixture-check', version: '1.0.0' },
  { capabilities: { sampling: {}, elicitation: {} } }
);
const logs = [];
const updates = [];
client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => logs.push(n.params));
client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => updates.push(n.params));
client.setRequestHandler(CreateMessageRequestSchema, async (req) => ({
  role: 'assistant',
  content: { type: 'text', text: `echo: ${req.params.messages[0].content.text}` },
  model: 'check-model',
  stopReason: 'endTurn'
}));
client.setRequestHandler(ElicitRequestSchema, async () => ({
  action: 'accept',
  content: { username: 'checker', email: 'checker@example.com' }
}));

let failed = 0;
async function check(name, fn) {
  try {
    const detail = await fn();
    console.log(`ok   ${name}${detail ? ` — ${detail}` : ''}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name} — ${e?.message ?? e}`);
  }
}
const assert = (cond, msg) => {
  if (!cond) throw new Error(msg);
};
const firstText = (r) => r.content?.find((c) => c.type === 'text')?.text;

await check('initialize', async () => {
  await client.connect(transport);
  const v = client.getServerVersion();
  return `${v.name} ${v.version}`;
});

await check('tools/list', async () => {
  const { tools } = await client.listTools();
  const names = new Set(tools.map((t) => t.name));
  for (const n of [
    'test_simple_text', 'test_image_content', 'test_audio_content', 'test_embedded_resource',
    'test_multiple_content_types', 'test_tool_with_logging', 'test_tool_with_progress',
    'test_error_handling', 'test_sampling', 'test_elicitation', 'test_elicitation_sep1034_defaults',
    'test_elicitation_sep1330_enums', 'test_reconnection', 'json_schema_2020_12_tool'
  ]) assert(names.has(n), `missing tool ${n}`);
  return `${tools.length} tools`;
});

await check('tools/call test_simple_text', async () => {
  const r = await client.callTool({ name: 'test_simple_text' });
  assert(firstText(r) === 'This is a simple text response for testing.', JSON.stringify(r));
});

await check('tools/call test_error_handling', async () => {
  const r = await client.callTool({ name: 'test_error_handling', arguments: {} });
  assert(r.isError === true, JSON.stringify(r));
});

await check('tools/call test_sampling', async () => {
  const r = await client.callTool({ name: 'test_sampling', arguments: { prompt: 'hi' } });
  assert(firstText(r) === 'LLM response: echo: hi', JSON.stringify(r));
});

await check('tools/call test_elicitation', async () => {
  const r = await client.callTool({ name: 'test_elicitation', arguments: { message: 'who?' } });
  assert(firstText(r)?.includes('checker@example.com'), JSON.stringify(r));
});

await check('tools/call test_tool_with_progress', async () => {
  const seen = [];
  await client.request(
    { method: 'tools/call', params: { name: 'test_tool_with_progress', arguments: {} } },
    CallToolResultSchema,
    { onprogress: (p) => seen.push(p.progress) }
  );
  assert(JSON.stringify(seen) === '[0,50,100]', `progress ${JSON.stringify(seen)}`);
});

await check('logging/setLevel + test_tool_with_logging', async () => {
  await client.setLoggingLevel('warning');
  logs.length = 0;
  await client.callTool({ name: 'test_tool_with_logging', arguments: {} });
  assert(logs.length === 0, `level warning still let ${logs.length} info messages through`);
  await client.setLoggingLevel('debug');
  await client.callTool({ name: 'test_tool_with_logging', arguments: {} });
  assert(logs.length === 3, `expected 3 log messages, got ${logs.length}`);
});

await check('tools/call test_reconnection', async () => {
  const r = await client.callTool({ name: 'test_reconnection', arguments: {} });
  assert(firstText(r)?.startsWith('Reconnection test completed'), JSON.stringify(r));
  if (target !== 'stdio') assert(resumes > 0, 'the client never resumed with Last-Event-ID');
  return target === 'stdio' ? '' : `${resumes} resume(s)`;
});

await check('resources', async () => {
  const { resources } = await client.listResources();
  assert(resources.length === 3, `resources ${JSON.stringify(resources)}`);
  const t = await client.readResource({ uri: 'test://static-text' });
  assert(t.contents[0].text?.length > 0, 'static-text');
  const b = await client.readResource({ uri: 'test://static-binary' });
  assert(b.contents[0].blob?.length > 0, 'static-binary');
  const d = await client.readResource({ uri: 'test://template/123/data' });
  assert(JSON.parse(d.contents[0].text).id === '123', 'template');
  const { resourceTemplates } = await client.listResourceTemplates();
  assert(resourceTemplates[0]?.uriTemplate === 'test://template/{id}/data', 'templates/list');
  const missing = await client.readResource({ uri: 'test://nope' }).then(() => null, (e) => e);
  assert(missing?.code === -32002, `unknown resource: ${missing?.code}`);
});

await check('resources/subscribe (update notification)', async () => {
  await client.subscribeResource({ uri: 'test://watched-resource' });
  const deadline = Date.now() + 4000;
  while (updates.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  await client.unsubscribeResource({ uri: 'test://watched-resource' });
  assert(updates[0]?.uri === 'test://watched-resource', 'no notifications/resources/updated within 4 s');
});

await check('prompts', async () => {
  const { prompts } = await client.listPrompts();
  assert(prompts.length === 4, `prompts ${prompts.length}`);
  const p = await client.getPrompt({ name: 'test_prompt_with_arguments', arguments: { arg1: 'a', arg2: 'b' } });
  assert(p.messages[0].content.text === "Prompt with arguments: arg1='a', arg2='b'", JSON.stringify(p));
});

await check('completion/complete', async () => {
  const r = await client.complete({
    ref: { type: 'ref/prompt', name: 'test_prompt_with_arguments' },
    argument: { name: 'arg1', value: 'par' }
  });
  assert(JSON.stringify(r.completion.values) === '["paris","park","party"]', JSON.stringify(r));
});

await check('ping', async () => {
  await client.ping();
});

if (target !== 'stdio') await transport.terminateSession().catch(() => {});
await client.close();
console.log(failed ? `${failed} check(s) failed` : 'all checks passed');
process.exit(failed ? 1 : 0);
