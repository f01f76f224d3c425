#!/usr/bin/env node
// Test OpenID Provider for ciba-gate interop: oidc-provider (npm, 9.x) with CIBA poll + ping,
// plus a small controller HTTP API that plays the end-user's authentication device.
//
//   node tests/oidc/op.mjs --port 0 --control-port 0 [--callback-port N]
//
// stdout carries exactly two lines, in this order, once both listeners are up:
//   CONTROL http://127.0.0.1:<control-port>
//   READY http://127.0.0.1:<port>              (the issuer)
// Everything else (oidc-provider notices included) goes to stderr.
//
// Ping clients register https://gateway.test/ciba/callback (the spec requires https and
// oidc-provider blocks loopback targets); the `fetch` configuration hook below rewrites that
// to http://127.0.0.1:<callback-port>/ciba/callback. The port comes from --callback-port or,
// later, from `POST /callback {"port": N}` on the controller.
//
// All secrets and keys here are TEST-ONLY values.

import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

// oidc-provider prints notices with console.info (stdout); keep stdout for READY/CONTROL only.
const toStderr = (...args) => console.error(...args);
console.info = toStderr;
console.log = toStderr;

const { default: Provider, errors } = await import('oidc-provider');

const here = dirname(fileURLToPath(import.meta.url));
const log = (...args) => console.error(new Date().toISOString(), '[op]', ...args);

// ---------------------------------------------------------------- arguments
function parseArgs(argv) {
  const out = { port: 0, controlPort: 0, callbackPort: undefined, host: '127.0.0.1' };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const next = () => {
      const v = argv[i + 1];
      if (v === undefined) throw new Error(`missing value for ${a}`);
      i += 1;
      return v;
    };
    switch (a) {
      case '--port': out.port = Number(next()); break;
      case '--control-port': out.controlPort = Number(next()); break;
      case '--callback-port': out.callbackPort = Number(next()); break;
      case '--help':
        console.error('usage: op.mjs --port N --control-port N [--callback-port N]');
        process.exit(0);
        break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  return out;
}
const args = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------- fixed test data
const CLIENT_SECRETS = {
  'gate-poll': 'gate-poll-test-secret-0000000000000000',
  'gate-post': 'gate-post-test-secret-0000000000000000',
  'gate-ping': 'gate-ping-test-secret-0000000000000000',
};
const NOTIFICATION_ENDPOINT = 'https://gateway.test/ciba/callback';
const GRANT_RESOURCE = 'urn:ciba-gate:approval';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const CALLBACK_HOST = 'gateway.test';

const USERS = {
  'alice@example.com': { accountId: 'alice', email: 'alice@example.com', name: 'Alice Example' },
  'bob@example.com': { accountId: 'bob', email: 'bob@example.com', name: 'Bob Example' },
};
const ACCOUNTS = Object.fromEntries(Object.values(USERS).map((u) => [u.accountId, u]));
// A second login hint for alice: one person, two hints (the two-person rule must
// count her once).
const ALIASES = { 'alice.alt@example.com': 'alice' };
const VALID_USER_CODE = '1234';

const clientJwk = JSON.parse(readFileSync(join(here, 'keys', 'client-es256.pub.jwk.json'), 'utf8'));
delete clientJwk._comment;

// Provider signing keys: fresh per process (RS256 is the default ID token alg).
const opKeys = [
  { ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'op-rs256' },
  { ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'ES256', kid: 'op-es256' },
];

// ---------------------------------------------------------------- storage adapter
// A small in-memory adapter (instead of the bundled LRU one) so the controller can list
// requests and force expiry. Records live for their TTL plus a grace period, so that an
// expired auth_req_id still answers `expired_token` (not `invalid_grant`) for a while.
const GRACE_MS = 10 * 60 * 1000;
const store = new Map(); // `${model}:${id}` -> { payload, model, id, keepUntil }

class MapAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const keepUntil = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 + GRACE_MS : Infinity;
    store.set(this.key(id), { payload, model: this.model, id, keepUntil });
  }

  async find(id) {
    const rec = store.get(this.key(id));
    if (!rec) return undefined;
    if (rec.keepUntil < Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return rec.payload;
  }

  async findByUserCode(userCode) {
    for (const rec of store.values()) {
      if (rec.model === this.model && rec.payload.userCode === userCode) return rec.payload;
    }
    return undefined;
  }

  async findByUid(uid) {
    for (const rec of store.values()) {
      if (rec.model === this.model && rec.payload.uid === uid) return rec.payload;
    }
    return undefined;
  }

  async consume(id) {
    const rec = store.get(this.key(id));
    if (rec) rec.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const [key, rec] of store) {
      if (rec.payload.grantId === grantId) store.delete(key);
    }
  }
}

// ---------------------------------------------------------------- CIBA bookkeeping
// auth_req_id -> what the authentication device was shown, plus outcome.
const requests = new Map();
const exchanges = []; // every token exchange granted
const pings = []; // every notification the OP attempted
let callbackPort = args.callbackPort;

function requestStatus(info) {
  const rec = store.get(`BackchannelAuthenticationRequest:${info.auth_req_id}`);
  if (!rec) return 'gone';
  const p = rec.payload;
  if (p.consumed) return 'redeemed';
  if (p.error) return p.error === 'access_denied' ? 'denied' : `error:${p.error}`;
  if (p.grantId) return 'approved';
  if (p.exp <= Math.floor(Date.now() / 1000)) return 'expired';
  return 'pending';
}

// ---------------------------------------------------------------- provider configuration
const configuration = {
  adapter: MapAdapter,
  jwks: { keys: opKeys },
  cookies: { keys: ['ciba-gate-test-cookie-key'] },
  clients: [
    {
      client_id: 'gate-poll',
      client_secret: CLIENT_SECRETS['gate-poll'],
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['urn:openid:params:grant-type:ciba', TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
      backchannel_token_delivery_mode: 'poll',
      backchannel_user_code_parameter: true,
      authorization_details_types: ['ciba_gate_tool_call'],
    },
    {
      client_id: 'gate-post',
      client_secret: CLIENT_SECRETS['gate-post'],
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['urn:openid:params:grant-type:ciba', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      backchannel_token_delivery_mode: 'poll',
    },
    {
      client_id: 'gate-ping',
      client_secret: CLIENT_SECRETS['gate-ping'],
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['urn:openid:params:grant-type:ciba'],
      response_types: [],
      redirect_uris: [],
      backchannel_token_delivery_mode: 'ping',
      backchannel_client_notification_endpoint: NOTIFICATION_ENDPOINT,
    },
    {
      client_id: 'gate-jwt',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [clientJwk] },
      grant_types: ['urn:openid:params:grant-type:ciba'],
      response_types: [],
      redirect_uris: [],
      backchannel_token_delivery_mode: 'poll',
      backchannel_user_code_parameter: true,
    },
  ],
  // acr, amr and auth_time come from backchannelResult(). Stock oidc-provider puts them in the
  // ID token only when asked (acr: acr_values; auth_time: max_age or require_auth_time; amr: the
  // claims parameter). Listing them under the `openid` scope puts them in every ID token, which
  // is what the gateway records as approver evidence. Replacing `claims` also drops the default
  // top-level `acr/sid/auth_time/iss: null` entries, so they are restated.
  claims: {
    acr: null,
    auth_time: null,
    sid: null,
    iss: null,
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  acrValues: ['urn:example:acr:phone', 'urn:example:acr:pin'],
  async findAccount(ctx, id) {
    const account = ACCOUNTS[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: account.email, email_verified: true, name: account.name };
      },
    };
  },
  features: {
    devInteractions: { enabled: false },
    // A tool server's audience (RFC 8707 `resource`): its access tokens are JWTs the tool
    // server verifies itself, carrying the approved call's authorization_details.
    resourceIndicators: {
      enabled: true,
      // oidc-provider wants a resource with RAR: a request that names none gets an
      // opaque token for this one (to be exchanged for the tool server's, RFC 8693).
      defaultResource: (ctx, client, oneOf) => oneOf
        ?? (ctx.oidc.params.authorization_details ? GRANT_RESOURCE : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => (resource === GRANT_RESOURCE
        ? { scope: 'tools:call', audience: resource, accessTokenTTL: 300, accessTokenFormat: 'opaque' }
        : {
          scope: 'tools:call',
          audience: resource,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
    },
    // RFC 9396: the gateway's `ciba_gate_tool_call` details, copied into the access token.
    richAuthorizationRequests: {
      enabled: true,
      types: {
        ciba_gate_tool_call: {
          validate(ctx, detail) {
            if (typeof detail.call_digest !== 'string' || typeof detail.tool !== 'string') {
              throw new errors.InvalidAuthorizationDetails('ciba_gate_tool_call needs tool and call_digest');
            }
          },
        },
      },
      authorizationDetailsForAccessToken: (ctx, token, source) => source?.rar,
      authorizationDetailsForGrantSource: (ctx, source) => source?.rar,
    },
    ciba: {
      enabled: true,
      deliveryModes: ['poll', 'ping'],
      async processLoginHint(ctx, loginHint) {
        // Unknown hint -> undefined -> oidc-provider answers `unknown_user_id`.
        return USERS[loginHint]?.accountId ?? ALIASES[loginHint];
      },
      async processLoginHintToken(ctx, loginHintToken) {
        throw new errors.InvalidRequest('login_hint_token is not supported by this test OP');
      },
      async validateBindingMessage(ctx, bindingMessage) {
        // oidc-provider's default rule, kept as is.
        if (bindingMessage?.match(/^[a-zA-Z0-9-._+/!?#]{1,20}$/) === null) {
          throw new errors.InvalidBindingMessage(
            'the binding_message value, when provided, needs to be 1 - 20 characters in length and use only a basic set of characters (matching the regex: ^[a-zA-Z0-9-._+/!?#]{1,20}$ )',
          );
        }
      },
      async validateRequestContext(ctx, requestContext) {
        // Anything (or nothing) is accepted.
      },
      async verifyUserCode(ctx, account, userCode) {
        if (!ctx.oidc.client.backchannelUserCodeParameter) return; // ignored unless registered
        if (userCode !== undefined && userCode !== VALID_USER_CODE) {
          throw new errors.InvalidUserCode('user_code does not match');
        }
      },
      async triggerAuthenticationDevice(ctx, request, account, client) {
        const info = {
          auth_req_id: request.jti,
          client_id: client.clientId,
          accountId: account.accountId,
          login_hint: ctx.oidc.params.login_hint,
          hint_type: ['login_hint', 'id_token_hint', 'login_hint_token'].find((h) => ctx.oidc.params[h]),
          binding_message: ctx.oidc.params.binding_message,
          user_code: ctx.oidc.params.user_code,
          scope: request.scope,
          acr_values: ctx.oidc.params.acr_values,
          requested_expiry: ctx.oidc.params.requested_expiry,
          resource: request.resource,
          authorization_details: ctx.oidc.params.authorization_details
            ? JSON.parse(ctx.oidc.params.authorization_details)
            : undefined,
          client_notification_token: ctx.oidc.params.client_notification_token,
          delivery_mode: client.backchannelTokenDeliveryMode,
          created_at: new Date().toISOString(),
          expires_at: new Date(Date.now() + request.expiration * 1000).toISOString(),
        };
        requests.set(request.jti, info);
        log('triggerAuthenticationDevice', JSON.stringify({ ...info, client_notification_token: info.client_notification_token ? '<redacted>' : undefined }));
      },
    },
  },
  ttl: {
    AccessToken: 3600,
    IdToken: 3600,
    Grant: 3600,
    RefreshToken: 24 * 3600,
    Interaction: 600,
    Session: 3600,
    // requested_expiry (seconds) is honoured up to 10 minutes; default 5 minutes.
    BackchannelAuthenticationRequest(ctx, request, client) {
      const requested = ctx?.oidc?.params?.requested_expiry;
      if (requested) return Math.min(600, Number(requested));
      return 300;
    },
  },
  // Rewrite the registered https notification endpoint to the local callback listener.
  async fetch(url, options) {
    const target = new URL(url);
    const entry = {
      at: new Date().toISOString(),
      url: target.href,
      body: typeof options.body === 'string' ? options.body : undefined,
    };
    pings.push(entry);
    if (target.hostname === CALLBACK_HOST) {
      if (!callbackPort) {
        entry.error = 'no callback port configured';
        log('ping not delivered:', entry.error);
        throw new Error(entry.error);
      }
      const rewritten = new URL(`${target.pathname}${target.search}`, `http://127.0.0.1:${callbackPort}`);
      entry.delivered_to = rewritten.href;
      delete options.dispatcher; // the SSRF-guarding dispatcher would refuse 127.0.0.1
      try {
        const res = await globalThis.fetch(rewritten, options);
        entry.status = res.status;
        log('ping', rewritten.href, '->', res.status);
        return res;
      } catch (err) {
        entry.error = String(err?.cause?.message ?? err?.message ?? err);
        log('ping', rewritten.href, 'failed:', entry.error);
        throw err;
      }
    }
    return globalThis.fetch(url, options);
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

// ---------------------------------------------------------------- OP listener
// Listen first so that --port 0 works, then build the provider with the real issuer.
let handler = (req, res) => { res.statusCode = 503; res.end(); };
const opServer = createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  opServer.once('error', reject);
  opServer.listen(args.port, args.host, resolve);
});
const issuer = `http://${args.host}:${opServer.address().port}`;

const provider = new Provider(issuer, configuration);

// RFC 8693 token exchange (oidc-provider has the hook, not the grant): an access token
// this OP issued to the same client, exchanged for a JWT for `audience` that keeps the
// approved authorization_details.
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { subject_token: subjectToken, subject_token_type: subjectType, audience } = ctx.oidc.params;
  if (subjectType !== ACCESS_TOKEN_TYPE) throw new errors.InvalidRequest('unsupported subject_token_type');
  if (!audience) throw new errors.InvalidRequest('audience is required');
  const subject = await provider.AccessToken.find(subjectToken);
  if (!subject || subject.clientId !== ctx.oidc.client.clientId) {
    throw new errors.InvalidGrant('subject_token is not an access token of this client');
  }
  const at = new provider.AccessToken({
    accountId: subject.accountId,
    client: ctx.oidc.client,
    grantId: subject.grantId,
    gty: 'token_exchange',
    rar: subject.rar,
    scope: 'tools:call',
  });
  at.resourceServer = new provider.ResourceServer(audience, {
    scope: 'tools:call',
    audience,
    accessTokenTTL: 300,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  });
  const value = await at.save();
  exchanges.push({ audience, client_id: ctx.oidc.client.clientId });
  log('token exchanged', audience);
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: at.expiration,
  };
}, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience']);
for (const ev of ['backchannel_authentication.error', 'grant.error', 'server_error']) {
  provider.on(ev, (ctx, err) => log(ev, err?.error ?? err?.message, err?.error_description ?? '', err?.error_detail ?? ''));
}
provider.on('backchannel_authentication.success', () => {});
handler = provider.callback();

// ---------------------------------------------------------------- controller
async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  if (!chunks.length) return {};
  const text = Buffer.concat(chunks).toString('utf8');
  return text.trim() ? JSON.parse(text) : {};
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function complete(id, result, opts) {
  let ping;
  try {
    await provider.backchannelResult(id, result, opts);
    ping = 'n/a';
  } catch (err) {
    // backchannelResult saves the outcome first, then awaits the ping; a failed ping rejects
    // but the request stays completed (oidc-provider never retries the ping).
    const info = requests.get(id);
    if (info?.delivery_mode !== 'ping') throw err;
    ping = `failed: ${err.cause?.message ?? err.message}`;
    return { ping };
  }
  const info = requests.get(id);
  if (info?.delivery_mode === 'ping') ping = 'sent';
  return { ping };
}

async function controller(req, res) {
  const url = new URL(req.url, 'http://controller');
  const parts = url.pathname.split('/').filter(Boolean);
  try {
    if (req.method === 'GET' && url.pathname === '/health') {
      return send(res, 200, { issuer, callback_port: callbackPort ?? null });
    }
    if (req.method === 'GET' && url.pathname === '/exchanges') {
      return send(res, 200, exchanges);
    }
    if (req.method === 'GET' && parts[0] === 'requests' && parts.length === 1) {
      const all = url.searchParams.has('all');
      const clientId = url.searchParams.get('client_id');
      const list = [...requests.values()]
        .map((info) => ({ ...info, status: requestStatus(info) }))
        .filter((info) => all || info.status === 'pending')
        .filter((info) => !clientId || info.client_id === clientId);
      return send(res, 200, list);
    }
    if (req.method === 'GET' && parts[0] === 'requests' && parts.length === 2) {
      const info = requests.get(parts[1]);
      if (!info) return send(res, 404, { error: 'not_found' });
      return send(res, 200, { ...info, status: requestStatus(info) });
    }
    if (req.method === 'GET' && url.pathname === '/pings') {
      return send(res, 200, pings);
    }
    if (req.method === 'POST' && url.pathname === '/callback') {
      const body = await readJson(req);
      callbackPort = Number(body.port);
      log('callback port set to', callbackPort);
      return send(res, 200, { callback_port: callbackPort });
    }
    if (req.method === 'POST' && parts[0] === 'requests' && parts.length === 3) {
      const [, id, action] = parts;
      const info = requests.get(id);
      if (!info) return send(res, 404, { error: 'not_found' });
      const status = requestStatus(info);
      const body = await readJson(req);

      if (action === 'expire') {
        if (status !== 'pending') return send(res, 409, { error: 'not_pending', status });
        const rec = store.get(`BackchannelAuthenticationRequest:${id}`);
        rec.payload.exp = Math.floor(Date.now() / 1000) - 1;
        log('expired', id);
        return send(res, 200, { auth_req_id: id, status: requestStatus(info) });
      }
      if (status !== 'pending') return send(res, 409, { error: 'not_pending', status });

      if (action === 'approve') {
        const grant = new provider.Grant({ accountId: info.accountId, clientId: info.client_id });
        grant.addOIDCScope(body.scope ?? info.scope ?? 'openid');
        if (info.resource) grant.addResourceScope(info.resource, 'tools:call');
        await grant.save();
        const outcome = await complete(id, grant, {
          acr: body.acr ?? 'urn:example:acr:phone',
          amr: body.amr ?? ['hwk'],
          authTime: body.auth_time ?? Math.floor(Date.now() / 1000),
          // What the person approved travels into the access token (RFC 9396).
          rar: info.authorization_details,
        });
        log('approved', id, JSON.stringify(outcome));
        return send(res, 200, { auth_req_id: id, status: requestStatus(info), ...outcome });
      }
      if (action === 'deny') {
        const outcome = await complete(id, new errors.AccessDenied(body.error_description ?? 'end-user denied the request'));
        log('denied', id, JSON.stringify(outcome));
        return send(res, 200, { auth_req_id: id, status: requestStatus(info), ...outcome });
      }
    }
    return send(res, 404, { error: 'not_found' });
  } catch (err) {
    log('controller error', err);
    return send(res, 500, { error: 'controller_error', message: String(err?.message ?? err) });
  }
}

const controlServer = createServer((req, res) => { controller(req, res); });
await new Promise((resolve, reject) => {
  controlServer.once('error', reject);
  controlServer.listen(args.controlPort, args.host, resolve);
});

process.stdout.write(`CONTROL http://${args.host}:${controlServer.address().port}\n`);
process.stdout.write(`READY ${issuer}\n`);
log('listening', issuer, 'control port', controlServer.address().port, 'callback port', callbackPort ?? '(unset)');

const shutdown = () => {
  opServer.close();
  controlServer.close();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
