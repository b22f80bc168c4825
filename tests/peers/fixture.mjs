#!/usr/bin/env node
// tether's conformance fixture: an MCP server, written with the official TypeScript SDK
// (@modelcontextprotocol/sdk 1.32.2, low-level `Server`), that implements everything the
// server scenarios of @modelcontextprotocol/conformance 0.1.16 exercise, so that the suite
// can be run against it directly and through tether, and the two scores compared.
//
// Usage (after scripts/setup-peers, which links tests/peers/node_modules to the pinned
// packages):
//   node tests/peers/fixture.mjs stdio          newline-delimited JSON-RPC on stdin/stdout
//   PORT=N node tests/peers/fixture.mjs http    Streamable HTTP at http://127.0.0.1:N/mcp
//
// In http mode the first line on stdout is `listening on http://127.0.0.1:PORT/mcp` (PORT=0
// picks a free port; the line gives the real one). Everything else goes to stderr.
//
// Environment:
//   PORT              http port (default 3000; 0 = any free port)
//   FIXTURE_RETRY_MS  `retry:` hint sent in SSE priming events (default 1000)
//   FIXTURE_WATCH_MS  how often test://watched-resource changes while subscribed (default 3000)
//   FIXTURE_QUIET=1   no per-session log lines on stderr
//
// HTTP behaviour (stateful sessions):
//   * Host must name localhost, 127.0.0.1 or [::1] (any port), and Origin, when present,
//     must be http(s) on one of those: anything else is refused with 403 before the body is
//     read (DNS-rebinding protection).
//   * Only /mcp exists (404 elsewhere); methods other than GET, POST, DELETE get 405.
//   * POST without Mcp-Session-Id must be an initialize request (else 400); it creates a
//     session with a fresh Mcp-Session-Id. An unknown or terminated Mcp-Session-Id gets 404.
//     GET/DELETE without Mcp-Session-Id get 400.
//   * Every session has an in-memory event store, so POST and GET SSE streams carry event
//     ids, begin with a priming event (protocol >= 2025-11-25), and can be resumed with
//     Last-Event-ID.
//   * Server-to-client requests and notifications caused by a tools/call (sampling,
//     elicitation, progress, log messages) travel on that call's POST SSE stream;
//     notifications/resources/updated travel on the standalone GET stream.

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  LoggingLevelSchema,
  McpError,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema
} from '@modelcontextprotocol/sdk/types.js';
import { PNG_1X1_BASE64, WAV_BASE64 } from './fixture-media.mjs';

const SERVER_INFO = { name: 'tether-conformance-fixture', version: '1.0.0' };
const RESOURCE_NOT_FOUND = -32002;

const quiet = process.env.FIXTURE_QUIET === '1';
const log = (...args) => {
  if (!quiet) console.error('[fixture]', ...args);
};

const watchIntervalMs = Number(process.env.FIXTURE_WATCH_MS ?? 3000);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (t) => ({ type: 'text', text: t });
const noArgs = { type: 'object', properties: {} };
const LEVELS = LoggingLevelSchema.options; // debug … emergency, least to most severe

// ---------------------------------------------------------------------------------------
// One MCP server per session (per stdio process).

function createFixtureServer({ onClose } = {}) {
  const server = new Server(SERVER_INFO, {
    capabilities: {
      tools: {},
      resources: { subscribe: true },
      prompts: {},
      logging: {},
      completions: {}
    },
    instructions: 'Conformance fixture for tether tests. Tools, resources and prompts are named test_* / test://*.'
  });

  let logLevel = undefined; // unset: everything is sent
  const subscriptions = new Set();
  let watchedTimer = undefined;
  let watchedVersion = 0;

  const levelEnabled = (level) =>
    logLevel === undefined || LEVELS.indexOf(level) >= LEVELS.indexOf(logLevel);

  // A log message tied to the request being handled (so it rides on that request's stream).
  const logTo = async (extra, level, data) => {
    if (!levelEnabled(level)) return;
    await extra.sendNotification({
      method: 'notifications/message',
      params: { level, logger: 'tether-fixture', data }
    });
  };

  const clientSupports = (capability) => Boolean(server.getClientCapabilities()?.[capability]);

  // ----- tools ------------------------------------------------------------------------

  const elicit = async (extra, params) => {
    if (!clientSupports('elicitation')) {
      return { isError: true, content: [text('The client does not support elicitation.')] };
    }
    const result = await extra.sendRequest({ method: 'elicitation/create', params }, ElicitResultSchema);
    return {
      content: [
        text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`)
      ]
    };
  };

  const tools = [
    {
      name: 'test_simple_text',
      description: 'Returns one text content item.',
      inputSchema: noArgs,
      run: async () => ({ content: [text('This is a simple text response for testing.')] })
    },
    {
      name: 'test_image_content',
      description: 'Returns one image content item (a 1x1 PNG).',
      inputSchema: noArgs,
      run: async () => ({ content: [{ type: 'image', data: PNG_1X1_BASE64, mimeType: 'image/png' }] })
    },
    {
      name: 'test_audio_content',
      description: 'Returns one audio content item (a short WAV).',
      inputSchema: noArgs,
      run: async () => ({ content: [{ type: 'audio', data: WAV_BASE64, mimeType: 'audio/wav' }] })
    },
    {
      name: 'test_embedded_resource',
      description: 'Returns one embedded resource content item.',
      inputSchema: noArgs,
      run: async () => ({
        content: [
          {
            type: 'resource',
            resource: {
              uri: 'test://embedded-resource',
              mimeType: 'text/plain',
              text: 'This is an embedded resource content.'
            }
          }
        ]
      })
    },
    {
      name: 'test_multiple_content_types',
      description: 'Returns text, image and embedded resource content together.',
      inputSchema: noArgs,
      run: async () => ({
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
    },
    {
      name: 'test_tool_with_logging',
      description: 'Sends three info log notifications, 50 ms apart, while it runs.',
      inputSchema: noArgs,
      run: async (_args, extra) => {
        await logTo(extra, 'info', 'Tool execution started');
        await sleep(50);
        await logTo(extra, 'info', 'Tool processing data');
        await sleep(50);
        await logTo(extra, 'info', 'Tool execution completed');
        return { content: [text('Tool with logging executed successfully')] };
      }
    },
    {
      name: 'test_tool_with_progress',
      description: 'Reports progress 0, 50, 100 of 100 (50 ms apart) when given a progressToken.',
      inputSchema: noArgs,
      run: async (_args, extra) => {
        const progressToken = extra._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (progress > 0) await sleep(50);
          if (progressToken !== undefined) {
            await extra.sendNotification({
              method: 'notifications/progress',
              params: { progressToken, progress, total: 100, message: `Completed ${progress} of 100` }
            });
          }
        }
        // The SDK client (1.32.2) dispatches notifications in a microtask but handles a response
        // at once, dropping the request's progress handler: when the last progress notification
        // and the result arrive in one read, that notification is lost. Leave a gap.
        await sleep(50);
        return { content: [text(`Progress complete (token ${JSON.stringify(progressToken ?? null)})`)] };
      }
    },
    {
      name: 'test_error_handling',
      description: 'Always fails with a tool execution error (isError: true).',
      inputSchema: noArgs,
      run: async () => ({
        isError: true,
        content: [text('This tool intentionally returns an error for testing')]
      })
    },
    {
      name: 'test_sampling',
      description: 'Asks the client for an LLM completion (sampling/createMessage) of the given prompt.',
      inputSchema: {
        type: 'object',
        properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } },
        required: ['prompt']
      },
      run: async (args, extra) => {
        if (typeof args.prompt !== 'string') {
          return { isError: true, content: [text('Argument "prompt" (string) is required.')] };
        }
        if (!clientSupports('sampling')) {
          return { isError: true, content: [text('The client does not support sampling.')] };
        }
        const result = await extra.sendRequest(
          {
            method: 'sampling/createMessage',
            params: {
              messages: [{ role: 'user', content: text(args.prompt) }],
              maxTokens: 100
            }
          },
          CreateMessageResultSchema
        );
        const parts = Array.isArray(result.content) ? result.content : [result.content];
        const reply = parts.filter((c) => c?.type === 'text').map((c) => c.text).join('') || '(no text)';
        return { content: [text(`LLM response: ${reply}`)] };
      }
    },
    {
      name: 'test_elicitation',
      description: 'Asks the user (elicitation/create, form mode) for a username and email.',
      inputSchema: {
        type: 'object',
        properties: { message: { type: 'string', description: 'The message to show the user' } },
        required: ['message']
      },
      run: async (args, extra) => {
        if (typeof args.message !== 'string') {
          return { isError: true, content: [text('Argument "message" (string) is required.')] };
        }
        const out = await elicit(extra, {
          message: args.message,
          requestedSchema: {
            type: 'object',
            properties: {
              username: { type: 'string', description: "User's response" },
              email: { type: 'string', description: "User's email address" }
            },
            required: ['username', 'email']
          }
        });
        if (!out.isError) out.content[0].text = out.content[0].text.replace('Elicitation completed', 'User response');
        return out;
      }
    },
    {
      name: 'test_elicitation_sep1034_defaults',
      description: 'Elicitation whose form has a default for every primitive type (SEP-1034).',
      inputSchema: noArgs,
      run: async (_args, extra) =>
        elicit(extra, {
          message: 'Please review the form; every field has a default.',
          requestedSchema: {
            type: 'object',
            properties: {
              name: { type: 'string', description: 'Name', default: 'John Doe' },
              age: { type: 'integer', description: 'Age', default: 30 },
              score: { type: 'number', description: 'Score', default: 95.5 },
              status: {
                type: 'string',
                description: 'Status',
                enum: ['active', 'inactive', 'pending'],
                default: 'active'
              },
              verified: { type: 'boolean', description: 'Verified', default: true }
            }
          }
        })
    },
    {
      name: 'test_elicitation_sep1330_enums',
      description: 'Elicitation whose form uses all five enum schema variants (SEP-1330).',
      inputSchema: noArgs,
      run: async (_args, extra) =>
        elicit(extra, {
          message: 'Please pick from the enum fields.',
          requestedSchema: {
            type: 'object',
            properties: {
              untitledSingle: {
                type: 'string',
                description: 'Untitled single-select',
                enum: ['option1', 'option2', 'option3']
              },
              titledSingle: {
                type: 'string',
                description: 'Titled single-select',
                oneOf: [
                  { const: 'value1', title: 'First Option' },
                  { const: 'value2', title: 'Second Option' },
                  { const: 'value3', title: 'Third Option' }
                ]
              },
              legacyEnum: {
                type: 'string',
                description: 'Legacy titled single-select (enumNames)',
                enum: ['opt1', 'opt2', 'opt3'],
                enumNames: ['Option One', 'Option Two', 'Option Three']
              },
              untitledMulti: {
                type: 'array',
                description: 'Untitled multi-select',
                minItems: 1,
                maxItems: 3,
                items: { type: 'string', enum: ['option1', 'option2', 'option3'] }
              },
              titledMulti: {
                type: 'array',
                description: 'Titled multi-select',
                minItems: 1,
                maxItems: 3,
                items: {
                  anyOf: [
                    { const: 'value1', title: 'First Choice' },
                    { const: 'value2', title: 'Second Choice' },
                    { const: 'value3', title: 'Third Choice' }
                  ]
                }
              }
            }
          }
        })
    },
    {
      name: 'test_reconnection',
      description:
        'Closes its own POST SSE stream mid-call (SEP-1699), then answers; the client must resume with Last-Event-ID to get the result. Over stdio it just answers.',
      inputSchema: noArgs,
      run: async (_args, extra) => {
        const closed = typeof extra.closeSSEStream === 'function';
        if (closed) extra.closeSSEStream();
        await sleep(100);
        return {
          content: [
            text(
              closed
                ? 'Reconnection test completed: the stream was closed mid-call and the result was delivered after the client resumed.'
                : 'Reconnection test completed (no resumable stream to close).'
            )
          ]
        };
      }
    },
    {
      name: 'json_schema_2020_12_tool',
      description: 'Has an inputSchema using JSON Schema 2020-12 features ($schema, $defs, additionalProperties).',
      inputSchema: {
        $schema: 'https://json-schema.org/draft/2020-12/schema',
        type: 'object',
        $defs: {
          address: {
            type: 'object',
            properties: { street: { type: 'string' }, city: { type: 'string' } }
          }
        },
        properties: {
          name: { type: 'string' },
          address: { $ref: '#/$defs/address' }
        },
        additionalProperties: false
      },
      run: async (args) => ({ content: [text(`json_schema_2020_12_tool called with ${JSON.stringify(args)}`)] })
    }
  ];
  const toolsByName = new Map(tools.map((t) => [t.name, t]));

  server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: tools.map(({ name, description, inputSchema }) => ({ name, description, inputSchema }))
  }));

  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const tool = toolsByName.get(request.params.name);
    if (!tool) throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
    try {
      return await tool.run(request.params.arguments ?? {}, extra);
    } catch (error) {
      return { isError: true, content: [text(`${tool.name} failed: ${error?.message ?? error}`)] };
    }
  });

  // ----- resources --------------------------------------------------------------------

  const staticResources = [
    {
      uri: 'test://static-text',
      name: 'static-text',
      title: 'Static text resource',
      description: 'A fixed text/plain resource.',
      mimeType: 'text/plain',
      read: () => ({ text: 'This is the content of the static text resource.' })
    },
    {
      uri: 'test://static-binary',
      name: 'static-binary',
      title: 'Static binary resource',
      description: 'A fixed image/png resource (1x1 pixel).',
      mimeType: 'image/png',
      read: () => ({ blob: PNG_1X1_BASE64 })
    },
    {
      uri: 'test://watched-resource',
      name: 'watched-resource',
      title: 'Watched resource',
      description: `Changes every ${watchIntervalMs} ms while subscribed; subscribers get notifications/resources/updated.`,
      mimeType: 'text/plain',
      read: () => ({ text: `Watched resource content, version ${watchedVersion}` })
    }
  ];
  const resourcesByUri = new Map(staticResources.map((r) => [r.uri, r]));
  const TEMPLATE = 'test://template/{id}/data';
  const templateMatch = (uri) => /^test:\/\/template\/([^/]+)\/data$/.exec(uri);

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({
    resources: staticResources.map(({ uri, name, title, description, mimeType }) => ({
      uri,
      name,
      title,
      description,
      mimeType
    }))
  }));

  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [
      {
        uriTemplate: TEMPLATE,
        name: 'template',
        title: 'Template resource',
        description: 'JSON data for the given id.',
        mimeType: 'application/json'
      }
    ]
  }));

  server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
    const { uri } = request.params;
    const resource = resourcesByUri.get(uri);
    if (resource) return { contents: [{ uri, mimeType: resource.mimeType, ...resource.read() }] };
    const m = templateMatch(uri);
    if (m) {
      const id = decodeURIComponent(m[1]);
      return {
        contents: [
          {
            uri,
            mimeType: 'application/json',
            text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` })
          }
        ]
      };
    }
    throw new McpError(RESOURCE_NOT_FOUND, 'Resource not found', { uri });
  });

  const stopWatching = () => {
    if (watchedTimer !== undefined) clearInterval(watchedTimer);
    watchedTimer = undefined;
  };

  server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    const { uri } = request.params;
    if (!resourcesByUri.has(uri) && !templateMatch(uri)) {
      throw new McpError(RESOURCE_NOT_FOUND, 'Resource not found', { uri });
    }
    subscriptions.add(uri);
    if (uri === 'test://watched-resource' && watchedTimer === undefined) {
      watchedTimer = setInterval(() => {
        watchedVersion += 1;
        // Not tied to any request: goes to the standalone (GET) stream, or the event store.
        server.sendResourceUpdated({ uri: 'test://watched-resource' }).catch(() => {});
      }, watchIntervalMs);
      watchedTimer.unref();
    }
    return {};
  });

  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscriptions.delete(request.params.uri);
    if (!subscriptions.has('test://watched-resource')) stopWatching();
    return {};
  });

  // ----- prompts ----------------------------------------------------------------------

  const prompts = [
    {
      name: 'test_simple_prompt',
      title: 'Simple prompt',
      description: 'A prompt without arguments.',
      arguments: [],
      get: () => [{ role: 'user', content: text('This is a simple prompt for testing.') }]
    },
    {
      name: 'test_prompt_with_arguments',
      title: 'Prompt with arguments',
      description: 'A prompt with two required arguments.',
      arguments: [
        { name: 'arg1', description: 'First test argument', required: true },
        { name: 'arg2', description: 'Second test argument', required: true }
      ],
      get: (a) => [{ role: 'user', content: text(`Prompt with arguments: arg1='${a.arg1}', arg2='${a.arg2}'`) }]
    },
    {
      name: 'test_prompt_with_embedded_resource',
      title: 'Prompt with embedded resource',
      description: 'A prompt that embeds the resource named by resourceUri.',
      arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
      get: (a) => [
        {
          role: 'user',
          content: {
            type: 'resource',
            resource: { uri: a.resourceUri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' }
          }
        },
        { role: 'user', content: text('Please process the embedded resource above.') }
      ]
    },
    {
      name: 'test_prompt_with_image',
      title: 'Prompt with image',
      description: 'A prompt that includes an image.',
      arguments: [],
      get: () => [
        { role: 'user', content: { type: 'image', data: PNG_1X1_BASE64, mimeType: 'image/png' } },
        { role: 'user', content: text('Please analyze the image above.') }
      ]
    }
  ];
  const promptsByName = new Map(prompts.map((p) => [p.name, p]));

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({
    prompts: prompts.map(({ name, title, description, arguments: args }) => ({
      name,
      title,
      description,
      ...(args.length ? { arguments: args } : {})
    }))
  }));

  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    const prompt = promptsByName.get(request.params.name);
    if (!prompt) throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${request.params.name}`);
    const args = request.params.arguments ?? {};
    const missing = prompt.arguments.filter((a) => a.required && typeof args[a.name] !== 'string');
    if (missing.length) {
      throw new McpError(
        ErrorCode.InvalidParams,
        `Missing required argument(s): ${missing.map((a) => a.name).join(', ')}`
      );
    }
    return { description: prompt.description, messages: prompt.get(args) };
  });

  // ----- completion -------------------------------------------------------------------

  const completionCandidates = {
    'ref/prompt test_prompt_with_arguments arg1': ['paris', 'park', 'party', 'test-value-1', 'testValue1'],
    'ref/prompt test_prompt_with_arguments arg2': ['test-value-2', 'testValue2', 'world'],
    'ref/prompt test_prompt_with_embedded_resource resourceUri': [
      'test://static-text',
      'test://static-binary',
      'test://watched-resource'
    ],
    [`ref/resource ${TEMPLATE} id`]: ['1', '2', '3', '42', '123']
  };

  server.setRequestHandler(CompleteRequestSchema, async (request) => {
    const { ref, argument } = request.params;
    const key = `${ref.type} ${ref.type === 'ref/prompt' ? ref.name : ref.uri} ${argument.name}`;
    const values = (completionCandidates[key] ?? []).filter((v) => v.startsWith(argument.value ?? ''));
    return { completion: { values: values.slice(0, 100), total: values.length, hasMore: false } };
  });

  // ----- logging ----------------------------------------------------------------------

  server.setRequestHandler(SetLevelRequestSchema, async (request) => {
    logLevel = request.params.level;
    return {};
  });

  server.onclose = () => {
    stopWatching();
    onClose?.();
  };

  return server;
}

// ---------------------------------------------------------------------------------------
// An in-memory event store (one per session) for SSE resumability. Event ids are
// `<streamId>#<seq>`, so a Last-Event-ID names its stream and its position.

class MemoryEventStore {
  constructor(limit = 5000) {
    this.limit = limit;
    this.seq = 0;
    this.events = []; // { streamId, seq, id, message }, oldest first
  }

  async storeEvent(streamId, message) {
    const seq = ++this.seq;
    const id = `${streamId}#${seq}`;
    this.events.push({ streamId, seq, id, message });
    if (this.events.length > this.limit) this.events.splice(0, this.events.length - this.limit);
    return id;
  }

  parse(eventId) {
    const at = eventId.lastIndexOf('#');
    const seq = Number(eventId.slice(at + 1));
    if (at <= 0 || !Number.isSafeInteger(seq)) throw new Error(`Unknown event id: ${eventId}`);
    return { streamId: eventId.slice(0, at), seq };
  }

  async getStreamIdForEventId(eventId) {
    try {
      return this.parse(eventId).streamId;
    } catch {
      return undefined;
    }
  }

  async replayEventsAfter(lastEventId, { send }) {
    const { streamId, seq } = this.parse(lastEventId);
    for (const e of this.events) {
      // Priming events are stored as `{}`: they only carry an id, there is nothing to replay.
      if (e.streamId === streamId && e.seq > seq && e.message?.jsonrpc) await send(e.id, e.message);
    }
    return streamId;
  }
}

// ---------------------------------------------------------------------------------------
// HTTP mode.

const LOCAL_HOSTNAMES = new Set(['localhost', '127.0.0.1', '[::1]']);

function hostnameOf(hostHeader) {
  try {
    return new URL(`http://${hostHeader}`).hostname;
  } catch {
    return undefined;
  }
}

function originAllowed(origin) {
  try {
    const u = new URL(origin);
    return (u.protocol === 'http:' || u.protocol === 'https:') && LOCAL_HOSTNAMES.has(u.hostname);
  } catch {
    return false;
  }
}

function sendJsonError(res, status, code, message, headers = {}) {
  if (res.headersSent) return res.end();
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

function readBody(req, maxBytes) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (c) => {
      size += c.length;
      if (size > maxBytes) tooLarge = true;
      else chunks.push(c);
    });
    req.on('end', () => resolve(tooLarge ? null : Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const isInitialize = (body) =>
  Array.isArray(body) ? body.some((m) => m?.method === 'initialize') : body?.method === 'initialize';

async function serveHttp() {
  const port = Number(process.env.PORT ?? 3000);
  const retryInterval = Number(process.env.FIXTURE_RETRY_MS ?? 1000);
  const maxBody = 4 * 1024 * 1024;
  const sessions = new Map(); // Mcp-Session-Id -> { transport, server }

  const newSession = async () => {
    let transport;
    const server = createFixtureServer({
      onClose: () => {
        const sid = transport?.sessionId;
        if (sid && sessions.delete(sid)) log(`session ${sid} closed`);
      }
    });
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new MemoryEventStore(),
      retryInterval,
      onsessioninitialized: (sid) => {
        sessions.set(sid, { transport, server });
        log(`session ${sid} initialized`);
      }
    });
    transport.onerror = (err) => log('transport error:', err?.message ?? err);
    await server.connect(transport);
    return transport;
  };

  const handle = async (req, res) => {
    // DNS-rebinding protection, before anything else (the body is not read).
    const hostname = hostnameOf(req.headers.host ?? '');
    if (!hostname || !LOCAL_HOSTNAMES.has(hostname)) {
      return sendJsonError(res, 403, -32000, `Forbidden: invalid Host header: ${req.headers.host ?? '(none)'}`);
    }
    if (req.headers.origin !== undefined && !originAllowed(req.headers.origin)) {
      return sendJsonError(res, 403, -32000, `Forbidden: invalid Origin header: ${req.headers.origin}`);
    }

    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/mcp') return sendJsonError(res, 404, -32000, `Not found: ${path}`);

    const sid = req.headers['mcp-session-id'];
    const session = typeof sid === 'string' ? sessions.get(sid) : undefined;

    if (req.method === 'POST') {
      const raw = await readBody(req, maxBody);
      if (raw === null) return sendJsonError(res, 413, -32000, `Request body over ${maxBody} bytes`);
      let body;
      try {
        body = JSON.parse(raw);
      } catch {
        return sendJsonError(res, 400, -32700, 'Parse error: request body is not JSON');
      }
      if (sid !== undefined) {
        if (!session) return sendJsonError(res, 404, -32001, 'Session not found');
        return session.transport.handleRequest(req, res, body);
      }
      if (!isInitialize(body)) {
        return sendJsonError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
      }
      const transport = await newSession();
      return transport.handleRequest(req, res, body);
    }

    if (req.method === 'GET' || req.method === 'DELETE') {
      if (sid === undefined) return sendJsonError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
      if (!session) return sendJsonError(res, 404, -32001, 'Session not found');
      if (req.method === 'GET' && req.headers['last-event-id']) {
        log(`session ${sid}: resume after ${req.headers['last-event-id']}`);
      }
      return session.transport.handleRequest(req, res);
    }

    return sendJsonError(res, 405, -32000, 'Method not allowed', { Allow: 'GET, POST, DELETE' });
  };

  const httpServer = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      log('error handling request:', err?.stack ?? err);
      sendJsonError(res, 500, -32603, 'Internal server error');
    });
  });

  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(port, '127.0.0.1', resolve);
  });
  const actual = httpServer.address().port;
  process.stdout.write(`listening on http://127.0.0.1:${actual}/mcp\n`);

  const shutdown = async () => {
    for (const { transport } of [...sessions.values()]) await transport.close().catch(() => {});
    httpServer.close();
    httpServer.closeAllConnections?.();
    process.exit(0);
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}

// ---------------------------------------------------------------------------------------
// stdio mode.

async function serveStdio() {
  const server = createFixtureServer({ onClose: () => process.exit(0) });
  const transport = new StdioServerTransport();
  await server.connect(transport);
  process.stdin.on('end', () => server.close().finally(() => process.exit(0)));
  process.on('SIGTERM', () => process.exit(0));
  log('serving on stdio');
}

const mode = process.argv[2];
if (mode === 'http') {
  await serveHttp();
} else if (mode === 'stdio') {
  await serveStdio();
} else {
  console.error('usage: node tests/peers/fixture.mjs stdio | http   (http: PORT env, default 3000)');
  process.exit(2);
}
