// MCP tool server built on the official MCP TypeScript SDK (McpServer over the
// Streamable HTTP server transport), used as the real upstream behind ciba-gate
// in tests/mcp_sdk_interop.rs.
//
//   node mcp-server.mjs --port N [--mode json|sse] [--stateful]
//                       [--calls-log PATH] [--http-log PATH] [--progress-delay-ms N]
//
// --mode json   answers requests with a single JSON body (enableJsonResponse)
// --mode sse    answers requests with an SSE stream (default); list_deployments
//               sends one notifications/progress first when asked for progress,
//               then waits --progress-delay-ms (default 500) before the result
// --stateful    sessions (Mcp-Session-Id from initialize, DELETE ends them);
//               list_deployments also sends notifications/tools/list_changed on
//               the session's GET stream. Default is stateless (fresh server +
//               transport per request, GET/DELETE answered 405)
// --calls-log   every tools/call the server receives, one JSON line
//               {tool, args, authorization}
// --http-log    every HTTP request the server receives, one JSON line
//               {method, path, session, authorization, rpc}
// --verify-issuer URL --verify-audience AUD
//               run deploy_service and delete_repository only with a bearer token
//               that proves a person approved exactly this call: a JWT signed by the
//               issuer's JWKS for this audience, unexpired, whose authorization_details
//               hold a ciba_gate_tool_call entry for this tool whose call_digest is the
//               SHA-256 of the JCS form of {name, arguments}, never seen before (jti).
//               A refused call is answered with isError and never runs or logs.
//
// --tls-cert PATH --tls-key PATH
//               serve HTTPS (node:https) with this certificate and key
// --stdio       serve one session over stdin/stdout (StdioServerTransport) instead
//               of HTTP (list_deployments sends notifications/tools/list_changed,
//               as with --stateful); --pid-file PATH writes the process id there
//               once ready
//
// Besides the tools it offers one prompt, deploy_checklist {service}, one
// resource, deploy://INSTANCE/deployments (--instance NAME, default "tools"), and
// one resource template, deploy://INSTANCE/deployments/{service}, whose service
// completes from the deployments. Resources can be subscribed to: a subscription
// (logged to --calls-log as {tool: "resources/subscribe", args: {uri}}, an
// unsubscribe likewise) is followed 300 ms later by notifications/resources/updated
// for its URI, sent unrelated to any request (on the session's GET stream; over
// stdio on stdout).
//
// Prints "READY <port>" on stdout once listening (over stdio: "READY stdio" on
// stderr). --port 0 picks a free port.

import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash, randomUUID } from 'node:crypto';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import {
  isInitializeRequest, SubscribeRequestSchema, UnsubscribeRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

function parseArgs(argv) {
  const opts = {
    port: 0, mode: 'sse', stateful: false, callsLog: null, httpLog: null, progressDelayMs: 500,
    verifyIssuer: null, verifyAudience: null, instance: 'tools', stdio: false, pidFile: null,
    tlsCert: null, tlsKey: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[++i];
    };
    switch (a) {
      case '--port': opts.port = Number(next()); break;
      case '--mode': opts.mode = next(); break;
      case '--stateful': opts.stateful = true; break;
      case '--calls-log': opts.callsLog = next(); break;
      case '--http-log': opts.httpLog = next(); break;
      case '--progress-delay-ms': opts.progressDelayMs = Number(next()); break;
      case '--verify-issuer': opts.verifyIssuer = next(); break;
      case '--verify-audience': opts.verifyAudience = next(); break;
      case '--instance': opts.instance = next(); break;
      case '--stdio': opts.stdio = true; break;
      case '--pid-file': opts.pidFile = next(); break;
      case '--tls-cert': opts.tlsCert = next(); break;
      case '--tls-key': opts.tlsKey = next(); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!['json', 'sse'].includes(opts.mode)) throw new Error(`--mode must be json or sse, got ${opts.mode}`);
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new Error('bad --port');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

function logLine(path, obj) {
  if (path) appendFileSync(path, JSON.stringify(obj) + '\n');
}

function header(extra, name) {
  const h = extra?.requestInfo?.headers?.[name];
  return Array.isArray(h) ? h.join(', ') : (h ?? null);
}

// ---------------------------------------------------------------- approval tokens
// The recipe a tool server follows to run only calls a person approved.

// RFC 8785 (JCS) for JSON data: sorted keys (UTF-16 order, as Array.sort), ES number
// and string serialisation (what JSON.stringify does), no whitespace.
function jcs(v) {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(jcs).join(',')}]`;
  return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${jcs(v[k])}`).join(',')}}`;
}

const callDigest = (name, args) =>
  createHash('sha256').update(jcs({ name, arguments: args ?? {} }), 'utf8').digest('hex');

let jwks;
const seenTokens = new Map(); // jti -> exp (kept while the token lives)

// Why this call may not run, or null when an approval token proves it may.
async function approvalRefusal(name, args, extra) {
  if (!opts.verifyIssuer) return null;
  const auth = header(extra, 'authorization');
  if (!auth?.startsWith('Bearer ')) return 'no approval token';
  if (!jwks) {
    const meta = await (await fetch(`${opts.verifyIssuer}/.well-known/openid-configuration`)).json();
    jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
  }
  let payload;
  try {
    ({ payload } = await jwtVerify(auth.slice('Bearer '.length), jwks, {
      issuer: opts.verifyIssuer,
      audience: opts.verifyAudience,
      algorithms: ['RS256', 'PS256', 'ES256', 'EdDSA'],
      requiredClaims: ['exp', 'jti'],
    }));
  } catch (err) {
    return `the approval token is not valid (${err.code ?? err.message})`;
  }
  const digest = callDigest(name, args);
  const approved = (payload.authorization_details ?? []).some(
    (d) => d.type === 'ciba_gate_tool_call' && d.tool === name && d.call_digest === digest,
  );
  if (!approved) return 'the approval token approves a different call';
  const now = Math.floor(Date.now() / 1000);
  for (const [jti, exp] of seenTokens) if (exp < now) seenTokens.delete(jti);
  if (seenTokens.has(payload.jti)) return 'the approval token was used before';
  seenTokens.set(payload.jti, payload.exp);
  return null;
}

const refused = (why) => ({ isError: true, content: [{ type: 'text', text: `refused: ${why}` }] });

const DEPLOYMENTS = [
  { service: 'payments', env: 'prod', version: 'v1.42.0' },
  { service: 'billing', env: 'staging', version: 'v2.3.1' },
];

function buildServer() {
  const server = new McpServer(
    { name: 'interop-tools', version: '1.0.0' },
    { capabilities: { tools: {}, resources: { subscribe: true } } },
  );

  const recordCall = (tool, args, extra) =>
    logLine(opts.callsLog, { tool, args: args ?? {}, authorization: header(extra, 'authorization') });

  server.registerTool(
    'list_deployments',
    {
      description: 'List the current deployments',
      annotations: { readOnlyHint: true },
    },
    async (extra) => {
      recordCall('list_deployments', {}, extra);
      const progressToken = extra?._meta?.progressToken;
      if (opts.mode === 'sse' && progressToken !== undefined) {
        await extra.sendNotification({
          method: 'notifications/progress',
          params: { progressToken, progress: 1, total: 2, message: 'reading deployments' },
        });
        // Hold the result back so a proxy that buffers the stream is visible
        // to the client as progress arriving together with the result.
        await new Promise((r) => setTimeout(r, opts.progressDelayMs));
      }
      if (opts.stateful || opts.stdio) {
        // Unrelated to this request, so it goes out on the client's standalone
        // GET event stream (over stdio: on stdout): proves that stream is relayed too.
        server.sendToolListChanged();
      }
      const text = DEPLOYMENTS.map((d) => `${d.service} ${d.env} ${d.version}`).join('\n');
      return { content: [{ type: 'text', text: `deployments:\n${text}` }] };
    },
  );

  server.registerTool(
    'deploy_service',
    {
      description: 'Deploy a service to an environment',
      inputSchema: { service: z.string(), env: z.string() },
    },
    async (args, extra) => {
      const why = await approvalRefusal('deploy_service', args, extra);
      if (why) return refused(why);
      recordCall('deploy_service', args, extra);
      return { content: [{ type: 'text', text: `deployed ${args.service} to ${args.env}` }] };
    },
  );

  server.registerTool(
    'delete_repository',
    {
      description: 'Delete a source repository',
      inputSchema: { repo: z.string() },
      annotations: { destructiveHint: true },
    },
    async (args, extra) => {
      const why = await approvalRefusal('delete_repository', args, extra);
      if (why) return refused(why);
      recordCall('delete_repository', args, extra);
      return { content: [{ type: 'text', text: `deleted ${args.repo}` }] };
    },
  );

  server.registerPrompt(
    'deploy_checklist',
    {
      description: 'What to check before deploying a service',
      argsSchema: { service: z.string() },
    },
    ({ service }) => ({
      messages: [{ role: 'user', content: { type: 'text', text: `checklist for ${service}` } }],
    }),
  );

  server.registerResource(
    'deployments',
    `deploy://${opts.instance}/deployments`,
    { description: 'The current deployments', mimeType: 'text/plain' },
    async (uri) => ({
      contents: [{ uri: uri.href, text: `deployments of ${opts.instance}` }],
    }),
  );

  // One resource per service, and completion of the service's name.
  server.registerResource(
    'deployment',
    new ResourceTemplate(`deploy://${opts.instance}/deployments/{service}`, {
      list: undefined,
      complete: {
        service: (value) => DEPLOYMENTS.map((d) => d.service).filter((s) => s.startsWith(value)),
      },
    }),
    { description: 'One service\'s deployment', mimeType: 'text/plain' },
    async (uri, { service }) => ({
      contents: [{ uri: uri.href, text: `deployment of ${service} on ${opts.instance}` }],
    }),
  );

  server.server.setRequestHandler(SubscribeRequestSchema, async (req, extra) => {
    recordCall('resources/subscribe', { uri: req.params.uri }, extra);
    setTimeout(() => {
      server.server.sendResourceUpdated({ uri: req.params.uri }).catch(() => {});
    }, 300);
    return {};
  });
  server.server.setRequestHandler(UnsubscribeRequestSchema, async (req, extra) => {
    recordCall('resources/unsubscribe', { uri: req.params.uri }, extra);
    return {};
  });

  server.registerTool(
    'hidden_unknown_tool',
    { description: 'A tool that no policy knows about' },
    async (extra) => {
      recordCall('hidden_unknown_tool', {}, extra);
      return { content: [{ type: 'text', text: 'this should never run behind the gateway' }] };
    },
  );

  return server;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function rpcSummary(body) {
  const msgs = Array.isArray(body) ? body : body ? [body] : [];
  return msgs.map((m) => (m && typeof m === 'object' ? (m.method ?? 'response') : 'invalid'));
}

function sendJsonRpcError(res, status, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

const sessions = new Map(); // session id -> transport (stateful mode)

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  let body;
  if (req.method === 'POST') {
    const raw = await readBody(req);
    try {
      body = JSON.parse(raw);
    } catch {
      body = undefined;
    }
  }
  const sessionId = req.headers['mcp-session-id'] ?? null;
  logLine(opts.httpLog, {
    method: req.method,
    path: url.pathname,
    session: sessionId,
    authorization: req.headers.authorization ?? null,
    rpc: rpcSummary(body),
  });

  if (url.pathname !== '/mcp') {
    res.writeHead(404).end();
    return;
  }

  const jsonResponse = opts.mode === 'json';

  if (!opts.stateful) {
    if (req.method !== 'POST') {
      sendJsonRpcError(res, 405, 'Method not allowed (stateless server)');
      return;
    }
    const server = buildServer();
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      enableJsonResponse: jsonResponse,
    });
    res.on('close', () => {
      transport.close();
      server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, body);
    return;
  }

  let transport = sessionId ? sessions.get(sessionId) : undefined;
  if (!transport) {
    if (sessionId) {
      sendJsonRpcError(res, 404, 'Session not found');
      return;
    }
    if (req.method !== 'POST' || !isInitializeRequest(body)) {
      sendJsonRpcError(res, 400, 'Bad Request: no valid session id');
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      enableJsonResponse: jsonResponse,
      onsessioninitialized: (id) => sessions.set(id, transport),
      onsessionclosed: (id) => sessions.delete(id),
    });
    const server = buildServer();
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
    };
    await server.connect(transport);
  }
  await transport.handleRequest(req, res, body);
}

if (opts.stdio) {
  const server = buildServer();
  await server.connect(new StdioServerTransport());
  if (opts.pidFile) writeFileSync(opts.pidFile, String(process.pid));
  process.stderr.write('READY stdio\n');
} else {
  serveHttp();
}

function serveHttp() {
  const onRequest = (req, res) => {
    handle(req, res).catch((err) => {
      console.error('request failed:', err);
      if (!res.headersSent) sendJsonRpcError(res, 500, 'Internal server error');
      else res.end();
    });
  };
  const httpServer = opts.tlsCert
    ? createTlsServer({ cert: readFileSync(opts.tlsCert), key: readFileSync(opts.tlsKey) }, onRequest)
    : createServer(onRequest);

  httpServer.listen(opts.port, '127.0.0.1', () => {
    process.stdout.write(`READY ${httpServer.address().port}\n`);
  });

  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      httpServer.close();
      process.exit(0);
    });
  }
}
