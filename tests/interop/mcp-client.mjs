// MCP client built on the official MCP TypeScript SDK (Client over the
// Streamable HTTP client transport), used as the real agent in front of
// ciba-gate in tests/mcp_sdk_interop.rs.
//
//   node mcp-client.mjs --url http://127.0.0.1:PORT/mcp [--terminate] [--timeout-ms N]
//                       [--agent-token T] [--wait-list-changed]
//
// Runs one scenario (initialize, tools/list, then tools/call of list_deployments
// with a progress token, deploy_service, delete_repository, hidden_unknown_tool)
// and prints ONE JSON object on stdout:
//   {serverInfo, protocolVersion, sessionId, tools: [names], toolAnnotations,
//    calls: {name: CallToolResult}, errors: {step: "message"},
//    progress: [{progress, total, message, atMs}], listDeploymentsDoneMs, terminated}
// atMs / listDeploymentsDoneMs are milliseconds since list_deployments was sent,
// so a caller can tell whether progress arrived before the result.
// Per-step failures are recorded in `errors` instead of aborting the run.
// --terminate ends the session with terminateSession() (HTTP DELETE) at the end.
// --agent-token sends "Authorization: Bearer T" on every request (the agent's
// own credential, which must never reach the tool server).
// --wait-list-changed waits (up to 5 s) for notifications/tools/list_changed on
// the standalone GET stream before finishing; `notifications` lists what came.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

function parseArgs(argv) {
  const opts = { url: null, terminate: false, timeoutMs: 20000, agentToken: null, waitListChanged: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[++i];
    };
    switch (a) {
      case '--url': opts.url = next(); break;
      case '--terminate': opts.terminate = true; break;
      case '--timeout-ms': opts.timeoutMs = Number(next()); break;
      case '--agent-token': opts.agentToken = next(); break;
      case '--wait-list-changed': opts.waitListChanged = true; break;
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

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const out = {
    serverInfo: null,
    protocolVersion: null,
    sessionId: null,
    tools: [],
    toolAnnotations: {},
    calls: {},
    errors: {},
    progress: [],
    listDeploymentsDoneMs: null,
    notifications: [],
    terminated: false,
  };
  const reqOpts = { timeout: opts.timeoutMs };

  const client = new Client({ name: 'interop-agent', version: '1.0.0' });
  let listChanged;
  const listChangedSeen = new Promise((resolve) => { listChanged = resolve; });
  client.setNotificationHandler(ToolListChangedNotificationSchema, (n) => {
    out.notifications.push(n.method);
    listChanged();
  });
  const requestInit = opts.agentToken
    ? { headers: { Authorization: `Bearer ${opts.agentToken}` } }
    : undefined;
  const transport = new StreamableHTTPClientTransport(new URL(opts.url), { requestInit });

  const step = async (name, fn) => {
    try {
      return await fn();
    } catch (err) {
      out.errors[name] = describe(err);
      return undefined;
    }
  };

  const connected = await step('connect', async () => {
    await client.connect(transport, reqOpts);
    return true;
  });

  if (connected) {
    out.serverInfo = client.getServerVersion() ?? null;
    out.protocolVersion = transport.protocolVersion ?? null;
    out.sessionId = transport.sessionId ?? null;

    await step('tools/list', async () => {
      const res = await client.listTools(undefined, reqOpts);
      out.tools = res.tools.map((t) => t.name);
      for (const t of res.tools) out.toolAnnotations[t.name] = t.annotations ?? null;
    });

    const call = (name, args, extraOpts = {}) =>
      step(name, async () => {
        out.calls[name] = await client.callTool({ name, arguments: args }, undefined, {
          ...reqOpts,
          ...extraOpts,
        });
      });

    const started = Date.now();
    await call('list_deployments', {}, {
      onprogress: (p) => out.progress.push({ ...p, atMs: Date.now() - started }),
    });
    out.listDeploymentsDoneMs = Date.now() - started;
    await call('deploy_service', { service: 'payments', env: 'prod' });
    await call('delete_repository', { repo: 'payments-api' });
    await call('hidden_unknown_tool', {});

    if (opts.waitListChanged) {
      await step('list_changed', () =>
        Promise.race([
          listChangedSeen,
          new Promise((_, reject) =>
            setTimeout(() => reject(new Error('no notifications/tools/list_changed within 5 s')), 5000),
          ),
        ]),
      );
    }

    if (opts.terminate) {
      await step('terminate', async () => {
        await transport.terminateSession();
        out.terminated = true;
      });
    }
  }

  await step('close', () => client.close());
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`mcp-client failed: ${describe(err)}\n`);
    process.exit(2);
  },
);
