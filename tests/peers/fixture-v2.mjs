#!/usr/bin/env node
// tether's dual-era conformance fixture: one MCP server, written with the TypeScript SDK v2
// (@modelcontextprotocol/server 2.4.0, low-level `Server`), that serves both protocol eras
// from one process: 2026-07-28 (stateless, per-request `_meta` envelope, `input_required`
// results) and the handshake era (initialize, served statelessly by the SDK's legacy path,
// which fulfils `input_required` returns with real server->client requests). It implements
// what the server scenarios of @modelcontextprotocol/conformance 0.2.0-alpha.12
// (`--requirements 2026-07-28`) call, so the suite can be run against it directly and
// through tether and the two scores compared (scripts/conformance-parity). The handshake-era
// fixture for conformance 0.1.16 is tests/peers/fixture.mjs.
//
// Packages: @modelcontextprotocol/server 2.4.0 (pinned in scripts/setup-peers) and
// @modelcontextprotocol/node 2.0.0 (its Node HTTP adapter; installed with the pinned
// supergateway 4.0.0, which depends on exactly that version).
//
// Usage:
//   node tests/peers/fixture-v2.mjs stdio          newline-delimited JSON-RPC on stdin/stdout
//   PORT=N node tests/peers/fixture-v2.mjs http    Streamable HTTP at http://127.0.0.1:N/mcp
//
// In http mode the first line on stdout is `listening on http://127.0.0.1:PORT/mcp` (PORT=0
// picks a free port). Everything else goes to stderr.
//
// Environment: PORT (default 3000), FIXTURE_QUIET=1 (no log lines on stderr),
// FIXTURE_STATE_KEY (the HMAC key sealing `requestState`; default: random per process),
// FIXTURE_LEGACY=stateless (http: serve the handshake era only with the SDK's sessionless
// per-request handler, which takes any request carrying the envelope for a 2026-07-28 one and
// cannot send server->client requests; default: sessions, below), FIXTURE_EXTRAS=1 (also serve
// what tether's era-matrix tests need and the conformance scenarios do not call, so that the
// scored surface stays as it is without it: the tools `tether_slow {seconds}` (read-only,
// idempotent: sleeps, then "slow done") and `tether_bump` (publishes resources/updated for
// test://static-text), the logging capability (logging/setLevel for the handshake era), and
// resources/subscribe + unsubscribe for the handshake era; a
// 2026-07-28 client watches the URI on `subscriptions/listen`, over HTTP or stdio).
//
// HTTP: Host must name localhost, 127.0.0.1 or [::1] and Origin, when present, one of them
// (else 403, DNS-rebinding protection); only /mcp exists (404 elsewhere). The handshake era is
// served statefully (an `initialize` opens a session with an Mcp-Session-Id, so the server can
// send its elicitation, sampling and roots requests on the call's stream); every other request
// goes to the SDK's per-request handler (2026-07-28, and sessionless legacy requests).

import http from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  Server,
  createMcpHandler,
  createRequestStateCodec,
  inputRequired,
  inputResponse,
  MissingRequiredClientCapabilityError,
  ProtocolError
} from '@modelcontextprotocol/server';
import { serveStdio } from '@modelcontextprotocol/server/stdio';
import { NodeStreamableHTTPServerTransport, toNodeHandler } from '@modelcontextprotocol/node';
import { PNG_1X1_BASE64, WAV_BASE64 } from './fixture-media.mjs';

const SERVER_INFO = { name: 'tether-conformance-fixture-v2', version: '2.0.0' };
const RESOURCE_NOT_FOUND = -32002;
const INVALID_PARAMS = -32602;
const CLIENT_CAPS_KEY = 'io.modelcontextprotocol/clientCapabilities';
const PROTOCOL_VERSION_KEY = 'io.modelcontextprotocol/protocolVersion';

const quiet = process.env.FIXTURE_QUIET === '1';
const extras = process.env.FIXTURE_EXTRAS === '1';
const BUMPED_URI = 'test://static-text';
// Handshake-era instances with their subscribed URIs (a session's or a stdio connection's), and
// the publisher of 2026-07-28 listen streams (set by the HTTP entry): where `tether_bump` tells.
const subscribers = new Map();
let publishModern = () => {};
const log = (...args) => {
  if (!quiet) console.error('[fixture-v2]', ...args);
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (t) => ({ type: 'text', text: t });
const noArgs = { type: 'object', properties: {} };

// requestState is sealed (HMAC, 10 min) so that a tampered one is refused (-32602).
const codec = createRequestStateCodec({
  key: process.env.FIXTURE_STATE_KEY ?? randomBytes(32),
  ttlSeconds: 600
});

const nameSchema = {
  type: 'object',
  properties: { name: { type: 'string' } },
  required: ['name']
};

// The capabilities the client declared: the request's envelope (2026-07-28), else the
// handshake's (handshake era).
const clientCaps = (server, ctx) => {
  const env = ctx.mcpReq.envelope ?? {};
  return env[CLIENT_CAPS_KEY] ?? env.clientCapabilities ?? server.getClientCapabilities() ?? {};
};

// ---------------------------------------------------------------------------------------
// One Server per request (http) or per connection (stdio), built by the SDK's factory.

function createFixtureServer() {
  const server = new Server(SERVER_INFO, {
    capabilities: {
      tools: {},
      resources: extras ? { subscribe: true } : {},
      prompts: {},
      completions: {},
      ...(extras ? { logging: {} } : {})
    },
    instructions: 'Dual-era conformance fixture for tether tests (test_* / test://*).',
    requestState: { verify: (state, ctx) => codec.verify(state, ctx) }
  });

  const elicitName = (message) =>
    inputRequired.elicit({ message, requestedSchema: nameSchema });

  const tools = [
    ['test_simple_text', async () => ({ content: [text('This is a simple text response for testing.')] })],
    ['test_image_content', async () => ({ content: [{ type: 'image', data: PNG_1X1_BASE64, mimeType: 'image/png' }] })],
    ['test_audio_content', async () => ({ content: [{ type: 'audio', data: WAV_BASE64, mimeType: 'audio/wav' }] })],
    [
      'test_embedded_resource',
      async () => ({
        content: [
          {
            type: 'resource',
            resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' }
          }
        ]
      })
    ],
    [
      'test_multiple_content_types',
      async () => ({
        content: [
          text('Multiple content types test:'),
          { type: 'image', data: PNG_1X1_BASE64, mimeType: 'image/png' },
          {
            type: 'resource',
            resource: {
              uri: 'test://mixed-content-resource',
              mimeType: 'application/json',
              text: JSON.stringify({ test: 'data', value: 123 })
            }
          }
        ]
      })
    ],
    [
      'test_tool_with_progress',
      async (_args, ctx) => {
        const progressToken = ctx.mcpReq._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (progress > 0) await sleep(50);
          if (progressToken !== undefined) {
            await ctx.mcpReq.notify({
              method: 'notifications/progress',
              params: { progressToken, progress, total: 100, message: `Completed ${progress} of 100` }
            });
          }
        }
        await sleep(50);
        return { content: [text(`Progress complete (token ${JSON.stringify(progressToken ?? null)})`)] };
      }
    ],
    [
      'test_error_handling',
      async () => ({ isError: true, content: [text('This tool intentionally returns an error for testing')] })
    ],
    [
      // Needs sampling; a client that did not declare it gets -32021 (HTTP 400).
      'test_missing_capability',
      async (_args, ctx) => {
        if (!clientCaps(server, ctx).sampling) {
          throw new MissingRequiredClientCapabilityError({ requiredCapabilities: { sampling: {} } });
        }
        return { content: [text('The client declared sampling.')] };
      }
    ],
    [
      // Elicitation asked for on the request's own response (input_required), never as an
      // independent request on the stream.
      'test_streaming_elicitation',
      async (_args, ctx) => {
        const r = inputResponse(ctx.mcpReq.inputResponses, 'user_name');
        if (r.kind !== 'elicit') return inputRequired({ inputRequests: { user_name: elicitName('What is your name?') } });
        return { content: [text(`Hello, ${r.content?.name}!`)] };
      }
    ],
    [
      // Logs only at or above the request's log level; nothing when the request set none.
      'test_logging_tool',
      async (_args, ctx) => {
        await ctx.mcpReq.log('info', 'Tool execution started', 'tether-fixture');
        await sleep(20);
        await ctx.mcpReq.log('info', 'Tool execution completed', 'tether-fixture');
        return { content: [text('Tool with logging executed successfully')] };
      }
    ],
    [
      'test_input_required_result_elicitation',
      async (_args, ctx) => {
        const r = inputResponse(ctx.mcpReq.inputResponses, 'user_name');
        if (r.kind !== 'elicit' || typeof r.content?.name !== 'string') {
          return inputRequired({ inputRequests: { user_name: elicitName('What is your name?') } });
        }
        return { content: [text(`Hello, ${r.content.name}!`)] };
      }
    ],
    [
      'test_input_required_result_sampling',
      async (_args, ctx) => {
        const r = inputResponse(ctx.mcpReq.inputResponses, 'capital_question');
        if (r.kind !== 'sampling') {
          return inputRequired({
            inputRequests: {
              capital_question: inputRequired.createMessage({
                messages: [{ role: 'user', content: text('What is the capital of France?') }],
                maxTokens: 100
              })
            }
          });
        }
        const c = r.result.content;
        const reply = (Array.isArray(c) ? c : [c]).filter((x) => x?.type === 'text').map((x) => x.text).join('');
        return { content: [text(`Sampling response: ${reply}`)] };
      }
    ],
    [
      'test_input_required_result_list_roots',
      async (_args, ctx) => {
        const r = inputResponse(ctx.mcpReq.inputResponses, 'client_roots');
        if (r.kind !== 'roots') {
          return inputRequired({ inputRequests: { client_roots: inputRequired.listRoots() } });
        }
        return { content: [text(`Roots: ${r.roots.map((x) => x.uri).join(', ')}`)] };
      }
    ],
    [
      'test_input_required_result_request_state',
      async (_args, ctx) => {
        const state = ctx.mcpReq.requestState();
        const r = inputResponse(ctx.mcpReq.inputResponses, 'confirm');
        if (state?.step !== 'confirm' || r.kind !== 'elicit') {
          return inputRequired({
            inputRequests: {
              confirm: inputRequired.elicit({
                message: 'Please confirm',
                requestedSchema: { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] }
              })
            },
            requestState: await codec.mint({ step: 'confirm' }, ctx)
          });
        }
        return { content: [text(`state-ok: confirmed=${JSON.stringify(r.content?.ok ?? null)}`)] };
      }
    ],
    [
      'test_input_required_result_multiple_inputs',
      async (_args, ctx) => {
        const state = ctx.mcpReq.requestState();
        const rs = ctx.mcpReq.inputResponses;
        const name = inputResponse(rs, 'user_name');
        const greeting = inputResponse(rs, 'greeting');
        const roots = inputResponse(rs, 'client_roots');
        if (state?.step !== 'multi' || name.kind !== 'elicit' || greeting.kind !== 'sampling' || roots.kind !== 'roots') {
          return inputRequired({
            inputRequests: {
              user_name: elicitName('What is your name?'),
              greeting: inputRequired.createMessage({
                messages: [{ role: 'user', content: text('Generate a greeting') }],
                maxTokens: 50
              }),
              client_roots: inputRequired.listRoots()
            },
            requestState: await codec.mint({ step: 'multi' }, ctx)
          });
        }
        return { content: [text(`All inputs received: name=${name.content?.name}, roots=${roots.roots.length}`)] };
      }
    ],
    [
      'test_input_required_result_multi_round',
      async (_args, ctx) => {
        const state = ctx.mcpReq.requestState();
        const rs = ctx.mcpReq.inputResponses;
        const step1 = inputResponse(rs, 'step1');
        const step2 = inputResponse(rs, 'step2');
        if (state?.round === 2 && step2.kind === 'elicit') {
          return { content: [text(`Done: name=${state.name}, color=${step2.content?.color}`)] };
        }
        if (state?.round === 1 && step1.kind === 'elicit') {
          return inputRequired({
            inputRequests: {
              step2: inputRequired.elicit({
                message: 'Step 2: What is your favorite color?',
                requestedSchema: { type: 'object', properties: { color: { type: 'string' } }, required: ['color'] }
              })
            },
            requestState: await codec.mint({ round: 2, name: step1.content?.name ?? null }, ctx)
          });
        }
        return inputRequired({
          inputRequests: { step1: elicitName('Step 1: What is your name?') },
          requestState: await codec.mint({ round: 1 }, ctx)
        });
      }
    ],
    [
      'test_input_required_result_tampered_state',
      async (_args, ctx) => {
        const state = ctx.mcpReq.requestState();
        const r = inputResponse(ctx.mcpReq.inputResponses, 'user_name');
        if (state?.step !== 'tamper' || r.kind !== 'elicit') {
          return inputRequired({
            inputRequests: { user_name: elicitName('What is your name?') },
            requestState: await codec.mint({ step: 'tamper' }, ctx)
          });
        }
        return { content: [text(`state-ok: Hello, ${r.content?.name}!`)] };
      }
    ],
    [
      'test_input_required_result_capabilities',
      async (_args, ctx) => {
        const caps = clientCaps(server, ctx);
        const rs = ctx.mcpReq.inputResponses;
        if (rs && Object.keys(rs).length > 0) {
          return { content: [text(`Received: ${Object.keys(rs).sort().join(', ')}`)] };
        }
        const inputRequests = {};
        if (caps.elicitation) inputRequests.user_name = elicitName('What is your name?');
        if (caps.sampling) {
          inputRequests.greeting = inputRequired.createMessage({
            messages: [{ role: 'user', content: text('Generate a greeting') }],
            maxTokens: 50
          });
        }
        if (caps.roots) inputRequests.client_roots = inputRequired.listRoots();
        if (Object.keys(inputRequests).length === 0) {
          return { content: [text('The client declared no input capability.')] };
        }
        return inputRequired({ inputRequests });
      }
    ]
  ];
  const described = tools.map(([name]) => ({ name, description: `Conformance tool ${name}.`, inputSchema: noArgs }));
  if (extras) {
    tools.push(
      [
        'tether_slow',
        async (args) => {
          await sleep(Math.min(Number(args.seconds ?? 1), 30) * 1000);
          return { content: [text('slow done')] };
        }
      ],
      [
        'tether_bump',
        async () => {
          let told = 0;
          for (const [peer, uris] of subscribers) {
            if (!uris.has(BUMPED_URI)) continue;
            told++;
            await peer.sendResourceUpdated({ uri: BUMPED_URI }).catch((e) => log('resources/updated failed:', e?.message ?? e));
          }
          publishModern(BUMPED_URI);
          return { content: [text(`bumped ${BUMPED_URI} (${told} handshake subscriber(s))`)] };
        }
      ]
    );
    described.push(
      {
        name: 'tether_slow',
        description: 'Sleeps for `seconds`, then answers; safe to repeat.',
        inputSchema: { type: 'object', properties: { seconds: { type: 'number' } } },
        annotations: { readOnlyHint: true, idempotentHint: true }
      },
      { name: 'tether_bump', description: `Publishes resources/updated for ${BUMPED_URI}.`, inputSchema: noArgs }
    );
    server.setRequestHandler('resources/subscribe', async (request) => {
      const uris = subscribers.get(server) ?? new Set();
      uris.add(request.params.uri);
      subscribers.set(server, uris);
      return {};
    });
    server.setRequestHandler('resources/unsubscribe', async (request) => {
      subscribers.get(server)?.delete(request.params.uri);
      return {};
    });
    server.onclose = () => subscribers.delete(server);
  }
  const toolsByName = new Map(tools);

  server.setRequestHandler('tools/list', async () => ({ tools: described }));

  server.setRequestHandler('tools/call', async (request, ctx) => {
    const run = toolsByName.get(request.params.name);
    if (!run) throw new ProtocolError(INVALID_PARAMS, `Unknown tool: ${request.params.name}`);
    return run(request.params.arguments ?? {}, ctx);
  });

  // ----- resources --------------------------------------------------------------------

  const staticResources = [
    {
      uri: 'test://static-text',
      name: 'static-text',
      mimeType: 'text/plain',
      read: () => ({ text: 'This is the content of the static text resource.' })
    },
    { uri: 'test://static-binary', name: 'static-binary', mimeType: 'image/png', read: () => ({ blob: PNG_1X1_BASE64 }) }
  ];
  const resourcesByUri = new Map(staticResources.map((r) => [r.uri, r]));
  const TEMPLATE = 'test://template/{id}/data';
  const templateMatch = (uri) => /^test:\/\/template\/([^/]+)\/data$/.exec(uri);

  server.setRequestHandler('resources/list', async () => ({
    resources: staticResources.map(({ uri, name, mimeType }) => ({ uri, name, mimeType }))
  }));
  server.setRequestHandler('resources/templates/list', async () => ({
    resourceTemplates: [{ uriTemplate: TEMPLATE, name: 'template', mimeType: 'application/json' }]
  }));
  server.setRequestHandler('resources/read', async (request) => {
    const { uri } = request.params;
    const resource = resourcesByUri.get(uri);
    if (resource) return { contents: [{ uri, mimeType: resource.mimeType, ...resource.read() }] };
    const m = templateMatch(uri);
    if (m) {
      const id = decodeURIComponent(m[1]);
      return {
        contents: [
          { uri, mimeType: 'application/json', text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }) }
        ]
      };
    }
    throw new ProtocolError(RESOURCE_NOT_FOUND, 'Resource not found', { uri });
  });

  // ----- prompts ----------------------------------------------------------------------

  const prompts = [
    ['test_simple_prompt', [], () => [{ role: 'user', content: text('This is a simple prompt for testing.') }]],
    [
      'test_prompt_with_arguments',
      ['arg1', 'arg2'],
      (a) => [{ role: 'user', content: text(`Prompt with arguments: arg1='${a.arg1}', arg2='${a.arg2}'`) }]
    ],
    [
      'test_prompt_with_embedded_resource',
      ['resourceUri'],
      (a) => [
        {
          role: 'user',
          content: {
            type: 'resource',
            resource: { uri: a.resourceUri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' }
          }
        },
        { role: 'user', content: text('Please process the embedded resource above.') }
      ]
    ],
    [
      'test_prompt_with_image',
      [],
      () => [
        { role: 'user', content: { type: 'image', data: PNG_1X1_BASE64, mimeType: 'image/png' } },
        { role: 'user', content: text('Please analyze the image above.') }
      ]
    ],
    ['test_input_required_result_prompt', [], null]
  ];
  const promptsByName = new Map(prompts.map(([name, args, get]) => [name, { args, get }]));

  server.setRequestHandler('prompts/list', async () => ({
    prompts: prompts.map(([name, args]) => ({
      name,
      description: `Conformance prompt ${name}.`,
      ...(args.length ? { arguments: args.map((a) => ({ name: a, required: true })) } : {})
    }))
  }));

  server.setRequestHandler('prompts/get', async (request, ctx) => {
    const prompt = promptsByName.get(request.params.name);
    if (!prompt) throw new ProtocolError(INVALID_PARAMS, `Unknown prompt: ${request.params.name}`);
    const args = request.params.arguments ?? {};
    if (prompt.get === null) {
      const r = inputResponse(ctx.mcpReq.inputResponses, 'user_context');
      if (r.kind !== 'elicit' || typeof r.content?.context !== 'string') {
        return inputRequired({
          inputRequests: {
            user_context: inputRequired.elicit({
              message: 'What context should the prompt use?',
              requestedSchema: { type: 'object', properties: { context: { type: 'string' } }, required: ['context'] }
            })
          }
        });
      }
      return { messages: [{ role: 'user', content: text(`Prompt with context: ${r.content.context}`) }] };
    }
    const missing = prompt.args.filter((a) => typeof args[a] !== 'string');
    if (missing.length) throw new ProtocolError(INVALID_PARAMS, `Missing required argument(s): ${missing.join(', ')}`);
    return { messages: prompt.get(args) };
  });

  // ----- completion -------------------------------------------------------------------

  const completionCandidates = {
    'ref/prompt test_prompt_with_arguments arg1': ['paris', 'park', 'party', 'test-value-1'],
    'ref/prompt test_prompt_with_arguments arg2': ['test-value-2', 'world'],
    [`ref/resource ${TEMPLATE} id`]: ['1', '2', '3', '42', '123']
  };
  server.setRequestHandler('completion/complete', async (request) => {
    const { ref, argument } = request.params;
    const key = `${ref.type} ${ref.type === 'ref/prompt' ? ref.name : ref.uri} ${argument.name}`;
    const values = (completionCandidates[key] ?? []).filter((v) => v.startsWith(argument.value ?? ''));
    return { completion: { values, total: values.length, hasMore: false } };
  });

  return server;
}

// ---------------------------------------------------------------------------------------

const LOCAL_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);
const hostnameOf = (hostHeader) => {
  try {
    return new URL(`http://${hostHeader}`).hostname;
  } catch {
    return undefined;
  }
};
const localOrigin = (origin) => {
  try {
    const u = new URL(origin);
    return (u.protocol === 'http:' || u.protocol === 'https:') && LOCAL_HOSTS.has(u.hostname);
  } catch {
    return false;
  }
};

function serveHttp() {
  const handler = createMcpHandler(() => createFixtureServer(), {
    legacy: 'stateless',
    onerror: (e) => log('error:', e?.message ?? e)
  });
  publishModern = (uri) => handler.notify.resourceUpdated(uri);
  const node = toNodeHandler(handler, { onerror: (e) => log('adapter error:', e?.message ?? e) });
  const sessions = new Map(); // Mcp-Session-Id -> NodeStreamableHTTPServerTransport
  const MAX_SESSIONS = 1000;
  const readBody = (req) =>
    new Promise((resolve, reject) => {
      const parts = [];
      let size = 0;
      req.on('data', (c) => {
        size += c.length;
        if (size > 4 * 1024 * 1024) reject(new Error('body too large'));
        else parts.push(c);
      });
      req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
      req.on('error', reject);
    });
  const stateless = process.env.FIXTURE_LEGACY === 'stateless';
  const handle = async (req, res, refuse) => {
    if (stateless) return node(req, res);
    const sid = req.headers['mcp-session-id'];
    if (typeof sid === 'string') {
      const t = sessions.get(sid);
      if (!t) return refuse(404, 'Session not found');
      const body = req.method === 'POST' ? JSON.parse((await readBody(req)) || 'null') : undefined;
      return t.handleRequest(req, res, body);
    }
    if (req.method !== 'POST') return node(req, res);
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return refuse(400, 'Parse error');
    }
    // A 2026-07-28 request (its envelope names the revision) goes to the per-request handler,
    // which refuses `initialize` as a removed method.
    const modern = body?.params?._meta?.[PROTOCOL_VERSION_KEY] !== undefined;
    if (body?.method !== 'initialize' || modern) return node(req, res, body);
    if (sessions.size >= MAX_SESSIONS) return refuse(503, 'Too many sessions');
    const transport = new NodeStreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => sessions.set(id, transport)
    });
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
    };
    await createFixtureServer().connect(transport);
    return transport.handleRequest(req, res, body);
  };
  const httpServer = http.createServer((req, res) => {
    const refuse = (status, message) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32600, message } }));
    };
    if (!LOCAL_HOSTS.has(hostnameOf(req.headers.host ?? ''))) return refuse(403, 'Host not allowed');
    if (req.headers.origin !== undefined && !localOrigin(req.headers.origin)) return refuse(403, 'Origin not allowed');
    if (new URL(req.url ?? '/', 'http://localhost').pathname !== '/mcp') return refuse(404, 'Not found');
    handle(req, res, refuse).catch((e) => {
      log('request failed:', e?.message ?? e);
      if (!res.headersSent) refuse(500, 'Internal error');
      else res.end();
    });
  });
  const port = Number(process.env.PORT ?? 3000);
  httpServer.listen(port, '127.0.0.1', () => {
    console.log(`listening on http://127.0.0.1:${httpServer.address().port}/mcp`);
  });
  const stop = () => {
    handler.close().finally(() => httpServer.close(() => process.exit(0)));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function serveOverStdio() {
  // A connection pinned to 2026-07-28 has its listens routed by the SDK from the instance's own
  // change notifications; a handshake-era one that subscribed was told above already.
  const factory = () => {
    const server = createFixtureServer();
    publishModern = (uri) => {
      if (subscribers.has(server)) return;
      server.sendResourceUpdated({ uri }).catch((e) => log('resources/updated failed:', e?.message ?? e));
    };
    return server;
  };
  const handle = serveStdio(factory, {
    legacy: 'serve',
    onerror: (e) => log('error:', e?.message ?? e)
  });
  const stop = () => handle.close().finally(() => process.exit(0));
  process.stdin.on('end', stop);
  process.on('SIGTERM', stop);
}

const mode = process.argv[2];
if (mode === 'http') serveHttp();
else if (mode === 'stdio') serveOverStdio();
else {
  console.error('usage: fixture-v2.mjs stdio | http');
  process.exit(2);
}
