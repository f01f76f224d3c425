// An agent on the official MCP TypeScript SDK's Client, pointed at one gateway
// endpoint that is a virtual server in front of several tool servers; used by
// tests/multiplex.rs.
//
//   node mcp-multi-client.mjs --url http://127.0.0.1:PORT/mcp --calls JSON
//                             [--revision R] [--terminate] [--pause-file PATH]
//                             [--await-list-changed N] [--await-updated N]
//
// Connects (initialize with the SDK's newest revision, or R when given: the
// request's protocolVersion is replaced before it is sent), lists the tools with
// the SDK's own result validation, then calls each {name, arguments} of --calls
// in order with default options. With --pause-file, it waits after the first
// call until that file exists (so a test can kill a server mid-session). A call
// may carry "abortAfterMs" (cancel it then: notifications/cancelled) and
// "progress": true (an onprogress handler, so the call has a progressToken; the
// notifications it got are counted in the call's "progress"); with
// "prompt": true it is a prompts/get instead, with "resource": true a
// resources/read of the URI in "name", with "subscribe": true / "unsubscribe": true
// a resources/subscribe / resources/unsubscribe of that URI, with "complete": true a
// completion/complete of its "ref" and "argument". Prompts, resources and resource templates are listed
// too.
// --terminate ends the session (HTTP DELETE) at the end. With --await-list-changed N
// it gives its event stream (GET, opened by the SDK after initialize) half a
// second before the calls, and after them waits up to 5 s until N
// notifications/tools/list_changed have arrived on it; --await-updated N likewise
// for N notifications/resources/updated (their URIs are reported in "updated").
//
// Prints ONE JSON object: {protocolVersion, sessionId, serverInfo, tools: [names], prompts,
//   resources, templates, listMeta, calls: [{name, result} | {name, error}], listChanged,
//   updated: [uris], terminated, error}.

import { existsSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  ResourceUpdatedNotificationSchema, ToolListChangedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';

function parseArgs(argv) {
  const opts = {
    url: null, calls: [], revision: null, terminate: false, pauseFile: null, awaitListChanged: 0,
    awaitUpdated: 0,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[++i];
    };
    switch (a) {
      case '--url': opts.url = next(); break;
      case '--calls': opts.calls = JSON.parse(next()); break;
      case '--revision': opts.revision = next(); break;
      case '--terminate': opts.terminate = true; break;
      case '--pause-file': opts.pauseFile = next(); break;
      case '--await-list-changed': opts.awaitListChanged = Number(next()); break;
      case '--await-updated': opts.awaitUpdated = Number(next()); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!opts.url) throw new Error('--url is required');
  return opts;
}

function askingFor(revision) {
  return async (url, init) => {
    if (revision && init?.body && typeof init.body === 'string') {
      const msg = JSON.parse(init.body);
      if (msg.method === 'initialize') {
        msg.params.protocolVersion = revision;
        init = { ...init, body: JSON.stringify(msg) };
      }
    }
    return fetch(url, init);
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const out = { calls: [], listChanged: 0, updated: [], terminated: false };
  const client = new Client({ name: 'multiplex-test-agent', version: '1.0.0' });
  client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
    out.listChanged += 1;
  });
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
    out.updated.push(n.params.uri);
  });
  const transport = new StreamableHTTPClientTransport(new URL(opts.url), {
    fetch: askingFor(opts.revision),
  });
  try {
    await client.connect(transport);
    out.protocolVersion = transport.protocolVersion ?? null;
    out.sessionId = transport.sessionId ?? null;
    out.serverInfo = client.getServerVersion() ?? null;
    const list = await client.listTools();
    out.tools = list.tools.map((t) => t.name);
    out.listMeta = list._meta ?? null;
    const prompts = await client.listPrompts();
    out.prompts = prompts.prompts.map((p) => p.name);
    const resources = await client.listResources();
    out.resources = resources.resources.map((r) => r.uri);
    const templates = await client.listResourceTemplates();
    out.templates = templates.resourceTemplates.map((t) => t.uriTemplate);
    if (opts.awaitListChanged || opts.awaitUpdated) await sleep(500);
    for (const [n, c] of opts.calls.entries()) {
      try {
        // abortAfterMs: cancel the call that long after sending it (the SDK sends
        // notifications/cancelled); progress: ask for progress (an onprogress handler).
        const options = {};
        if (c.abortAfterMs !== undefined) {
          const abort = new AbortController();
          setTimeout(() => abort.abort('cancelled by the test'), c.abortAfterMs);
          options.signal = abort.signal;
        }
        let progress = 0;
        if (c.progress) options.onprogress = () => { progress += 1; };
        const result = c.prompt
          ? await client.getPrompt({ name: c.name, arguments: c.arguments ?? {} })
          : c.resource
            ? await client.readResource({ uri: c.name })
            : c.subscribe
              ? await client.subscribeResource({ uri: c.name })
            : c.unsubscribe
              ? await client.unsubscribeResource({ uri: c.name })
            : c.complete
              ? await client.complete({ ref: c.ref, argument: c.argument })
              : await client.callTool({ name: c.name, arguments: c.arguments ?? {} }, undefined, options);
        out.calls.push(c.progress ? { name: c.name, result, progress } : { name: c.name, result });
      } catch (e) {
        out.calls.push({ name: c.name, error: { code: e.code ?? null, message: String(e.message ?? e) } });
      }
      if (n === 0 && opts.pauseFile) {
        console.error('PAUSED');
        for (let i = 0; i < 300 && !existsSync(opts.pauseFile); i++) await sleep(100);
      }
    }
    for (let i = 0; i < 50 && out.listChanged < opts.awaitListChanged; i++) await sleep(100);
    for (let i = 0; i < 50 && out.updated.length < opts.awaitUpdated; i++) await sleep(100);
    if (opts.terminate) {
      await transport.terminateSession();
      out.terminated = true;
    }
  } catch (e) {
    out.error = String(e?.stack ?? e);
  }
  await client.close().catch(() => {});
  console.log(JSON.stringify(out));
}

main();
