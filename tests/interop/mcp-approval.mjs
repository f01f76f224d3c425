// The approval matrix with the official MCP TypeScript SDK's Client, used by
// tests/mcp_sdk_interop.rs: for every protocol revision the SDK speaks and
// every way an agent calls a tool, call deploy_service (which the bundled
// policy sends for approval) through the gateway and report how it ended.
//
//   node mcp-approval.mjs --url http://127.0.0.1:PORT/mcp [--revisions a,b] [--variants a,b]
//                         [--max-rounds N] [--retry-ms N]
//
// Variants:
//   default      callTool(params) with no options at all (no progressToken)
//   onprogress   callTool(params, undefined, {onprogress, resetTimeoutOnProgress})
//   elicit       default options, a client that declares the elicitation
//                capability and has a handler (it accepts with no content)
//
// The SDK Client always asks for its newest revision in initialize; to speak an
// older one, the request's protocolVersion is replaced (in a fetch wrapper) by
// the revision under test before it is sent. Everything after that is the SDK's
// own behaviour at the revision the server agreed to.
//
// A result that says approval_pending (a parked call) is retried identically,
// every --retry-ms (default 300), up to --max-rounds (default 60) calls in all.
// Every result went through the SDK's own validation (CallToolResultSchema,
// ListToolsResultSchema); it is parsed again here with the SDK's schema.
//
// Prints ONE JSON object: {supported: [...], runs: [{revision, variant,
//   negotiated, tools, rounds, pending: [first pending result], result, progress,
//   elicitations, error}]}.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CallToolResultSchema,
  ElicitRequestSchema,
  ListToolsResultSchema,
  SUPPORTED_PROTOCOL_VERSIONS,
} from '@modelcontextprotocol/sdk/types.js';

function parseArgs(argv) {
  const opts = {
    url: null,
    revisions: SUPPORTED_PROTOCOL_VERSIONS,
    variants: ['default', 'onprogress', 'elicit'],
    maxRounds: 60,
    retryMs: 300,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[++i];
    };
    switch (a) {
      case '--url': opts.url = next(); break;
      case '--revisions': opts.revisions = next().split(','); break;
      case '--variants': opts.variants = next().split(','); break;
      case '--max-rounds': opts.maxRounds = Number(next()); break;
      case '--retry-ms': opts.retryMs = Number(next()); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!opts.url) throw new Error('--url is required');
  return opts;
}

function describe(err) {
  if (err && typeof err === 'object') {
    const code = err.code !== undefined ? ` (code ${err.code})` : '';
    return `${err.name ?? 'Error'}: ${err.message}${code}`;
  }
  return String(err);
}

/// fetch that asks for `revision` in initialize instead of the SDK's newest.
function askingFor(revision) {
  return async (url, init) => {
    if (init && typeof init.body === 'string') {
      const msg = JSON.parse(init.body);
      if (msg && msg.method === 'initialize') {
        msg.params.protocolVersion = revision;
        init = { ...init, body: JSON.stringify(msg) };
      }
    }
    return fetch(url, init);
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const isPending = (res) => res?._meta?.['ciba-gate/reason'] === 'approval_pending';

async function run(opts, revision, variant) {
  const out = {
    revision,
    variant,
    negotiated: null,
    tools: [],
    rounds: 0,
    pending: null,
    result: null,
    progress: [],
    elicitations: 0,
    error: null,
  };
  const capabilities = variant === 'elicit' ? { elicitation: {} } : {};
  const client = new Client({ name: 'approval-matrix', version: '1.0.0' }, { capabilities });
  if (variant === 'elicit') {
    client.setRequestHandler(ElicitRequestSchema, async () => {
      out.elicitations += 1;
      return { action: 'accept', content: {} };
    });
  }
  const transport = new StreamableHTTPClientTransport(new URL(opts.url), {
    fetch: askingFor(revision),
  });
  try {
    await client.connect(transport);
    out.negotiated = transport.protocolVersion ?? null;
    const list = await client.listTools();
    ListToolsResultSchema.parse(list);
    out.tools = list.tools.map((t) => t.name);
    const params = { name: 'deploy_service', arguments: { service: 'payments', env: 'prod' } };
    const call = () => {
      out.rounds += 1;
      if (variant === 'onprogress') {
        return client.callTool(params, undefined, {
          onprogress: (p) => out.progress.push(p),
          resetTimeoutOnProgress: true,
        });
      }
      return client.callTool(params);
    };
    let res = await call();
    while (isPending(res) && out.rounds < opts.maxRounds) {
      out.pending ??= res;
      await sleep(opts.retryMs);
      res = await call();
    }
    CallToolResultSchema.parse(res);
    out.result = res;
  } catch (err) {
    out.error = describe(err);
  } finally {
    try {
      await client.close();
    } catch {
      // closing a stateless transport has nothing to end
    }
  }
  return out;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const report = { supported: SUPPORTED_PROTOCOL_VERSIONS, runs: [] };
  for (const revision of opts.revisions) {
    for (const variant of opts.variants) {
      report.runs.push(await run(opts, revision, variant));
    }
  }
  process.stdout.write(JSON.stringify(report) + '\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`mcp-approval failed: ${describe(err)}\n`);
    process.exit(2);
  },
);
