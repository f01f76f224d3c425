#!/usr/bin/env node
// End-to-end smoke test of the test OP (op.mjs): starts it on ephemeral loopback ports, runs
// CIBA poll and ping flows and the error cases with raw HTTP, prints a JSON summary on stdout
// and exits non-zero if any check fails.
//
//   node tests/oidc/smoke.mjs

import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { randomBytes, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { createRemoteJWKSet, jwtVerify, SignJWT, decodeProtectedHeader } from 'jose';

const here = dirname(fileURLToPath(import.meta.url));
const CIBA_GRANT = 'urn:openid:params:grant-type:ciba';
const SECRETS = {
  'gate-poll': 'gate-poll-test-secret-0000000000000000',
  'gate-post': 'gate-post-test-secret-0000000000000000',
  'gate-ping': 'gate-ping-test-secret-0000000000000000',
};
const jwtKey = createPrivateKey(readFileSync(join(here, 'keys', 'client-es256.pem')));
const jwtKid = JSON.parse(readFileSync(join(here, 'keys', 'client-es256.pub.jwk.json'), 'utf8')).kid;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const checks = [];
const wire = {};

function check(name, ok, detail) {
  checks.push({ name, ok: !!ok, ...(detail === undefined ? {} : { detail }) });
  if (!ok) console.error(`FAIL ${name}`, detail === undefined ? '' : JSON.stringify(detail));
}

// ---------------------------------------------------------------- ping receiver
const received = []; // { at, headers, body, waiter }
const pingWaiters = [];
const callbackServer = createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const entry = {
      at: Date.now(),
      method: req.method,
      path: req.url,
      headers: req.headers,
      body: Buffer.concat(chunks).toString('utf8'),
    };
    received.push(entry);
    res.statusCode = 204;
    res.end();
    const w = pingWaiters.shift();
    if (w) w(entry);
  });
});
await new Promise((r) => callbackServer.listen(0, '127.0.0.1', r));
const callbackPort = callbackServer.address().port;

function nextPing(timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no ping received')), timeoutMs);
    pingWaiters.push((e) => { clearTimeout(t); resolve(e); });
  });
}

// ---------------------------------------------------------------- start the OP
const op = spawn(process.execPath, [join(here, 'op.mjs'), '--port', '0', '--control-port', '0', '--callback-port', String(callbackPort)], {
  stdio: ['ignore', 'pipe', 'pipe'],
});
const opLog = [];
op.stderr.on('data', (d) => opLog.push(d.toString()));
const { issuer, control } = await new Promise((resolve, reject) => {
  let buf = '';
  let controlUrl;
  const t = setTimeout(() => reject(new Error(`OP did not start:\n${opLog.join('')}`)), 15000);
  op.stdout.on('data', (d) => {
    buf += d.toString();
    for (const line of buf.split('\n')) {
      if (line.startsWith('CONTROL ')) controlUrl = line.slice(8).trim();
      if (line.startsWith('READY ')) {
        clearTimeout(t);
        resolve({ issuer: line.slice(6).trim(), control: controlUrl });
      }
    }
  });
  op.on('exit', (code) => reject(new Error(`OP exited ${code}:\n${opLog.join('')}`)));
});

// ---------------------------------------------------------------- helpers
async function http(url, { method = 'GET', headers = {}, form, json } = {}) {
  const init = { method, headers: { accept: 'application/json', ...headers } };
  if (form) {
    init.body = new URLSearchParams(form).toString();
    init.headers['content-type'] = 'application/x-www-form-urlencoded';
  }
  if (json) {
    init.body = JSON.stringify(json);
    init.headers['content-type'] = 'application/json';
  }
  const res = await fetch(url, init);
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: res.status, headers: Object.fromEntries(res.headers), body };
}

const basic = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

async function clientAssertion(aud, overrides = {}) {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ jti: randomBytes(16).toString('hex'), ...overrides })
    .setProtectedHeader({ alg: 'ES256', kid: jwtKid })
    .setIssuer('gate-jwt')
    .setSubject('gate-jwt')
    .setAudience(aud)
    .setIssuedAt(now)
    .setExpirationTime(now + 60)
    .sign(jwtKey);
}

// Client authentication as each client registered it.
async function auth(clientId, form, { secret, aud, assertion } = {}) {
  switch (clientId) {
    case 'gate-post':
      return { headers: {}, form: { ...form, client_id: clientId, client_secret: secret ?? SECRETS[clientId] } };
    case 'gate-jwt':
      return {
        headers: {},
        form: {
          ...form,
          client_id: clientId,
          client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
          client_assertion: assertion ?? await clientAssertion(aud ?? issuer),
        },
      };
    default:
      return { headers: { authorization: basic(clientId, secret ?? SECRETS[clientId]) }, form };
  }
}

let meta;
async function bcAuthorize(clientId, params, authOpts) {
  const a = await auth(clientId, params, authOpts);
  return http(meta.backchannel_authentication_endpoint, { method: 'POST', headers: a.headers, form: a.form });
}
async function tokenRequest(clientId, authReqId, authOpts) {
  const a = await auth(clientId, { grant_type: CIBA_GRANT, auth_req_id: authReqId }, authOpts);
  return http(meta.token_endpoint, { method: 'POST', headers: a.headers, form: a.form });
}
const ctl = (path, method = 'GET', json) => http(`${control}${path}`, { method, json });

let jwks;
async function verifyIdToken(idToken, clientId) {
  const { payload, protectedHeader } = await jwtVerify(idToken, jwks, { issuer, audience: clientId });
  return { payload, header: protectedHeader };
}

async function run(name, fn) {
  try {
    await fn();
  } catch (err) {
    check(name, false, { exception: String(err?.stack ?? err) });
  }
}

// ---------------------------------------------------------------- checks
await run('discovery', async () => {
  const r = await http(`${issuer}/.well-known/openid-configuration`);
  meta = r.body;
  jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
  check('discovery', r.status === 200
    && meta.issuer === issuer
    && meta.backchannel_authentication_endpoint === `${issuer}/backchannel`
    && meta.grant_types_supported.includes(CIBA_GRANT)
    && JSON.stringify(meta.backchannel_token_delivery_modes_supported) === '["poll","ping"]'
    && meta.backchannel_user_code_parameter_supported === true, {
    backchannel_authentication_endpoint: meta.backchannel_authentication_endpoint,
    token_endpoint: meta.token_endpoint,
    backchannel_token_delivery_modes_supported: meta.backchannel_token_delivery_modes_supported,
    backchannel_user_code_parameter_supported: meta.backchannel_user_code_parameter_supported,
    backchannel_authentication_request_signing_alg_values_supported: meta.backchannel_authentication_request_signing_alg_values_supported ?? null,
    id_token_signing_alg_values_supported: meta.id_token_signing_alg_values_supported,
    token_endpoint_auth_methods_supported: meta.token_endpoint_auth_methods_supported,
  });
});

let pollAuthReqId;
let pollTokens;
await run('poll approve', async () => {
  const ack = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', binding_message: 'TX-42' });
  wire.poll_ack = { status: ack.status, body_keys: Object.keys(ack.body), expires_in: ack.body.expires_in, interval: ack.body.interval ?? null };
  check('poll: ack 200 with auth_req_id, expires_in, no interval', ack.status === 200 && ack.body.auth_req_id && ack.body.expires_in === 300 && !('interval' in ack.body), ack.body);
  pollAuthReqId = ack.body.auth_req_id;

  const pending = await ctl('/requests');
  const mine = pending.body.find((p) => p.auth_req_id === pollAuthReqId);
  check('controller lists the pending request', mine && mine.accountId === 'alice' && mine.binding_message === 'TX-42' && mine.client_id === 'gate-poll' && mine.scope === 'openid', mine);

  // Rapid polls: oidc-provider never answers slow_down.
  const early = [];
  for (let i = 0; i < 3; i += 1) early.push(await tokenRequest('gate-poll', pollAuthReqId));
  wire.pending = { status: early[0].status, body: early[0].body };
  check('poll: authorization_pending (400) on rapid polls, never slow_down', early.every((r) => r.status === 400 && r.body.error === 'authorization_pending'), early.map((r) => r.body.error));

  const approved = await ctl(`/requests/${pollAuthReqId}/approve`, 'POST');
  check('controller approve', approved.status === 200 && approved.body.status === 'approved', approved.body);

  const tok = await tokenRequest('gate-poll', pollAuthReqId);
  pollTokens = tok.body;
  const { payload, header } = await verifyIdToken(tok.body.id_token, 'gate-poll');
  wire.poll_token_response = { status: tok.status, keys: Object.keys(tok.body), token_type: tok.body.token_type, expires_in: tok.body.expires_in, scope: tok.body.scope };
  wire.poll_id_token = { header, claims: Object.keys(payload), payload };
  check('poll: tokens after approval, ID token valid with sub/acr/amr/auth_time', tok.status === 200
    && tok.body.token_type === 'Bearer' && tok.body.access_token
    && payload.sub === 'alice' && payload.acr === 'urn:example:acr:phone'
    && JSON.stringify(payload.amr) === '["hwk"]' && typeof payload.auth_time === 'number'
    && !('refresh_token' in tok.body), { body: Object.keys(tok.body), payload });
});

await run('replay', async () => {
  const again = await tokenRequest('gate-poll', pollAuthReqId);
  wire.replay = { status: again.status, body: again.body };
  check('replayed auth_req_id -> invalid_grant (400)', again.status === 400 && again.body.error === 'invalid_grant', again.body);
  // The replay revokes the grant: the access token from the first redemption is dead now.
  const ui = await http(meta.userinfo_endpoint, { headers: { authorization: `Bearer ${pollTokens.access_token}` } });
  wire.replay_revokes_access_token = ui.status === 401;
  check('replay revokes the first access token (userinfo 401)', ui.status === 401, { status: ui.status, body: ui.body });
});

await run('poll deny', async () => {
  const ack = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'bob@example.com' });
  const denied = await ctl(`/requests/${ack.body.auth_req_id}/deny`, 'POST');
  check('controller deny', denied.status === 200 && denied.body.status === 'denied', denied.body);
  const tok = await tokenRequest('gate-poll', ack.body.auth_req_id);
  wire.denied = { status: tok.status, body: tok.body };
  check('deny -> access_denied (400)', tok.status === 400 && tok.body.error === 'access_denied', tok.body);
  const again = await tokenRequest('gate-poll', ack.body.auth_req_id);
  wire.denied_again = { status: again.status, body: again.body };
  check('poll after access_denied -> invalid_grant', again.status === 400 && again.body.error === 'invalid_grant', again.body);
});

await run('expire', async () => {
  const ack = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', requested_expiry: '30' });
  check('requested_expiry=30 -> expires_in 30', ack.status === 200 && ack.body.expires_in === 30, ack.body);
  const ex = await ctl(`/requests/${ack.body.auth_req_id}/expire`, 'POST');
  check('controller expire', ex.status === 200 && ex.body.status === 'expired', ex.body);
  const tok = await tokenRequest('gate-poll', ack.body.auth_req_id);
  wire.expired = { status: tok.status, body: tok.body };
  check('expired request -> expired_token (400)', tok.status === 400 && tok.body.error === 'expired_token', tok.body);
  const big = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', requested_expiry: '100000' });
  check('requested_expiry is capped at 600', big.body.expires_in === 600, big.body);
  const bad = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', requested_expiry: '-5' });
  wire.bad_requested_expiry = { status: bad.status, body: bad.body };
  check('negative requested_expiry -> invalid_request', bad.status === 400 && bad.body.error === 'invalid_request', bad.body);
});

await run('ping approve', async () => {
  const token = randomBytes(24).toString('base64url');
  const ack = await bcAuthorize('gate-ping', { scope: 'openid', login_hint: 'alice@example.com', client_notification_token: token, binding_message: 'PING-1' });
  check('ping: ack 200', ack.status === 200 && ack.body.auth_req_id && !('interval' in ack.body), ack.body);
  const early = await tokenRequest('gate-ping', ack.body.auth_req_id);
  check('ping client may also poll: authorization_pending', early.body.error === 'authorization_pending', early.body);

  const pingP = nextPing();
  const t0 = Date.now();
  const approved = await ctl(`/requests/${ack.body.auth_req_id}/approve`, 'POST');
  const t1 = Date.now();
  const ping = await pingP;
  wire.ping = {
    method: ping.method,
    path: ping.path,
    headers: ping.headers,
    body: ping.body,
    ms_after_approve_call: ping.at - t0,
    approve_call_returned_after_ping: t1 >= ping.at,
    controller_reply: approved.body,
  };
  check('ping received: POST, Bearer client_notification_token, JSON {auth_req_id}', ping.method === 'POST'
    && ping.path === '/ciba/callback'
    && ping.headers.authorization === `Bearer ${token}`
    && ping.headers['content-type'] === 'application/json'
    && ping.body === JSON.stringify({ auth_req_id: ack.body.auth_req_id }), ping);
  check('controller approve reports ping sent', approved.body.ping === 'sent', approved.body);

  const tok = await tokenRequest('gate-ping', ack.body.auth_req_id);
  const { payload } = await verifyIdToken(tok.body.id_token, 'gate-ping');
  wire.ping_id_token_claims = Object.keys(payload);
  check('ping: tokens after the ping', tok.status === 200 && payload.sub === 'alice' && payload.aud === 'gate-ping', { status: tok.status, payload });
});

await run('ping deny', async () => {
  const token = randomBytes(24).toString('base64url');
  const ack = await bcAuthorize('gate-ping', { scope: 'openid', login_hint: 'bob@example.com', client_notification_token: token });
  const pingP = nextPing();
  await ctl(`/requests/${ack.body.auth_req_id}/deny`, 'POST');
  const ping = await pingP;
  wire.ping_on_deny = { sent: true, body: ping.body };
  check('ping is sent on deny too', ping.body === JSON.stringify({ auth_req_id: ack.body.auth_req_id }) && ping.headers.authorization === `Bearer ${token}`, ping);
  const tok = await tokenRequest('gate-ping', ack.body.auth_req_id);
  check('ping deny -> access_denied', tok.status === 400 && tok.body.error === 'access_denied', tok.body);
});

await run('ping errors', async () => {
  const missing = await bcAuthorize('gate-ping', { scope: 'openid', login_hint: 'alice@example.com' });
  wire.ping_missing_notification_token = { status: missing.status, body: missing.body };
  check('ping without client_notification_token -> invalid_request', missing.status === 400 && missing.body.error === 'invalid_request', missing.body);
  const badTok = await bcAuthorize('gate-ping', { scope: 'openid', login_hint: 'alice@example.com', client_notification_token: 'has space' });
  check('malformed client_notification_token -> invalid_request', badTok.status === 400 && badTok.body.error === 'invalid_request', badTok.body);

  // A failing callback: the request is still completed, the ping is not retried.
  await ctl('/callback', 'POST', { port: 1 });
  const ack = await bcAuthorize('gate-ping', { scope: 'openid', login_hint: 'alice@example.com', client_notification_token: randomBytes(24).toString('base64url') });
  const approved = await ctl(`/requests/${ack.body.auth_req_id}/approve`, 'POST');
  await ctl('/callback', 'POST', { port: callbackPort });
  wire.ping_failure_controller_reply = approved.body;
  const tok = await tokenRequest('gate-ping', ack.body.auth_req_id);
  check('failed ping: request still approved, a poll gets tokens', approved.body.status === 'approved' && String(approved.body.ping).startsWith('failed') && tok.status === 200, { approved: approved.body, token_status: tok.status });
});

await run('client auth errors', async () => {
  const r = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com' }, { secret: 'wrong' });
  wire.invalid_client_backchannel = { status: r.status, body: r.body, www_authenticate: r.headers['www-authenticate'] ?? null };
  check('wrong secret (basic) at backchannel -> invalid_client 401', r.status === 401 && r.body.error === 'invalid_client', r.body);
  const t = await tokenRequest('gate-poll', 'whatever', { secret: 'wrong' });
  wire.invalid_client_token = { status: t.status, body: t.body, www_authenticate: t.headers['www-authenticate'] ?? null };
  check('wrong secret at token -> invalid_client 401', t.status === 401 && t.body.error === 'invalid_client', t.body);
  const p = await bcAuthorize('gate-post', { scope: 'openid', login_hint: 'alice@example.com' }, { secret: 'wrong' });
  check('wrong secret (post) -> invalid_client 401', p.status === 401 && p.body.error === 'invalid_client', p.body);
  const wrongMethod = await bcAuthorize('gate-post', { scope: 'openid', login_hint: 'alice@example.com' });
  const viaBasic = await http(meta.backchannel_authentication_endpoint, { method: 'POST', headers: { authorization: basic('gate-post', SECRETS['gate-post']) }, form: { scope: 'openid', login_hint: 'alice@example.com' } });
  // oidc-provider treats client_secret_basic and client_secret_post as interchangeable.
  const jwtViaBasic = await http(meta.backchannel_authentication_endpoint, { method: 'POST', headers: { authorization: basic('gate-jwt', 'x') }, form: { scope: 'openid', login_hint: 'alice@example.com' } });
  wire.basic_post_interchangeable = viaBasic.status === 200;
  wire.private_key_jwt_client_via_basic = { status: jwtViaBasic.status, body: jwtViaBasic.body };
  check('secret_post client also accepted via basic; private_key_jwt client via basic -> invalid_client', wrongMethod.status === 200 && viaBasic.status === 200 && jwtViaBasic.status === 401 && jwtViaBasic.body.error === 'invalid_client', { viaBasic: viaBasic.body, jwtViaBasic: jwtViaBasic.body });
});

await run('authentication request errors', async () => {
  const unknown = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'mallory@example.com' });
  wire.unknown_user = { status: unknown.status, body: unknown.body };
  check('unknown user -> unknown_user_id (400)', unknown.status === 400 && unknown.body.error === 'unknown_user_id', unknown.body);

  const bm = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', binding_message: 'this has spaces and is long' });
  wire.invalid_binding_message = { status: bm.status, body: bm.body };
  check('bad binding_message -> invalid_binding_message (400)', bm.status === 400 && bm.body.error === 'invalid_binding_message', bm.body);
  const bm21 = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', binding_message: 'A'.repeat(21) });
  const bm20 = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', binding_message: 'A'.repeat(20) });
  check('binding_message limit is 20 chars', bm21.body.error === 'invalid_binding_message' && bm20.status === 200, { bm21: bm21.body, bm20: bm20.body });

  const uc = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', user_code: '9999' });
  wire.invalid_user_code = { status: uc.status, body: uc.body };
  check('wrong user_code -> invalid_user_code (400)', uc.status === 400 && uc.body.error === 'invalid_user_code', uc.body);
  const ucOk = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', user_code: '1234' });
  check('right user_code -> 200', ucOk.status === 200, ucOk.body);
  const ucIgnored = await bcAuthorize('gate-post', { scope: 'openid', login_hint: 'alice@example.com', user_code: '9999' });
  check('user_code ignored for a client without backchannel_user_code_parameter', ucIgnored.status === 200, ucIgnored.body);

  const noOpenid = await bcAuthorize('gate-poll', { scope: 'email', login_hint: 'alice@example.com' });
  wire.missing_openid_scope = { status: noOpenid.status, body: noOpenid.body };
  check('scope without openid -> invalid_request', noOpenid.status === 400 && noOpenid.body.error === 'invalid_request', noOpenid.body);

  const noHint = await bcAuthorize('gate-poll', { scope: 'openid' });
  wire.no_hint = { status: noHint.status, body: noHint.body };
  check('no hint -> invalid_request', noHint.status === 400 && noHint.body.error === 'invalid_request', noHint.body);

  const twoHints = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com', login_hint_token: 'x' });
  wire.two_hints = { status: twoHints.status, body: twoHints.body };
  check('two hints -> invalid_request', twoHints.status === 400 && twoHints.body.error === 'invalid_request', twoHints.body);

  const unknownScope = await bcAuthorize('gate-poll', { scope: 'openid payments', login_hint: 'alice@example.com' });
  wire.unknown_scope = { status: unknownScope.status, body: unknownScope.body };
  check('unknown extra scope is accepted and dropped', unknownScope.status === 200, unknownScope.body);

  const lht = await bcAuthorize('gate-poll', { scope: 'openid', login_hint_token: 'anything' });
  wire.login_hint_token = { status: lht.status, body: lht.body };
  check('login_hint_token -> invalid_request (not supported by this OP config)', lht.status === 400 && lht.body.error === 'invalid_request', lht.body);
});

await run('token request errors', async () => {
  const unknown = await tokenRequest('gate-poll', 'no-such-request');
  wire.unknown_auth_req_id = { status: unknown.status, body: unknown.body };
  check('unknown auth_req_id -> invalid_grant', unknown.status === 400 && unknown.body.error === 'invalid_grant', unknown.body);
  const ack = await bcAuthorize('gate-poll', { scope: 'openid', login_hint: 'alice@example.com' });
  const other = await tokenRequest('gate-post', ack.body.auth_req_id);
  wire.other_clients_auth_req_id = { status: other.status, body: other.body };
  check("another client's auth_req_id -> invalid_grant", other.status === 400 && other.body.error === 'invalid_grant', other.body);
});

await run('refresh token', async () => {
  const ack = await bcAuthorize('gate-post', { scope: 'openid offline_access', login_hint: 'bob@example.com' });
  await ctl(`/requests/${ack.body.auth_req_id}/approve`, 'POST');
  const tok = await tokenRequest('gate-post', ack.body.auth_req_id);
  check('client_secret_post + offline_access -> refresh_token', tok.status === 200 && tok.body.refresh_token && tok.body.scope === 'openid offline_access', { status: tok.status, keys: Object.keys(tok.body) });
});

await run('private_key_jwt', async () => {
  const ack = await bcAuthorize('gate-jwt', { scope: 'openid', login_hint: 'alice@example.com' }, { aud: issuer });
  check('private_key_jwt (aud=issuer) at backchannel -> 200', ack.status === 200, ack.body);
  const ackTokAud = await bcAuthorize('gate-jwt', { scope: 'openid', login_hint: 'alice@example.com' }, { aud: meta.token_endpoint });
  const ackBcAud = await bcAuthorize('gate-jwt', { scope: 'openid', login_hint: 'alice@example.com' }, { aud: meta.backchannel_authentication_endpoint });
  const ackBad = await bcAuthorize('gate-jwt', { scope: 'openid', login_hint: 'alice@example.com' }, { aud: 'https://elsewhere.example' });
  wire.private_key_jwt_aud_backchannel = { issuer: ack.status, token_endpoint: ackTokAud.status, backchannel_endpoint: ackBcAud.status, other: { status: ackBad.status, body: ackBad.body } };
  check('backchannel accepts aud = issuer | token endpoint | backchannel endpoint; rejects others', ackTokAud.status === 200 && ackBcAud.status === 200 && ackBad.status === 401 && ackBad.body.error === 'invalid_client', wire.private_key_jwt_aud_backchannel);

  const reuse = await clientAssertion(issuer);
  const first = await bcAuthorize('gate-jwt', { scope: 'openid', login_hint: 'alice@example.com' }, { assertion: reuse });
  const second = await bcAuthorize('gate-jwt', { scope: 'openid', login_hint: 'alice@example.com' }, { assertion: reuse });
  wire.private_key_jwt_reused_assertion = { status: second.status, body: second.body };
  check('reused client assertion (same jti) -> invalid_client', first.status === 200 && second.status === 401 && second.body.error === 'invalid_client', second.body);

  await ctl(`/requests/${ack.body.auth_req_id}/approve`, 'POST');
  const bcAudAtToken = await tokenRequest('gate-jwt', ack.body.auth_req_id, { aud: meta.backchannel_authentication_endpoint });
  wire.private_key_jwt_token_with_backchannel_aud = { status: bcAudAtToken.status, body: bcAudAtToken.body };
  check('token endpoint rejects aud = backchannel endpoint', bcAudAtToken.status === 401 && bcAudAtToken.body.error === 'invalid_client', bcAudAtToken.body);
  const tok = await tokenRequest('gate-jwt', ack.body.auth_req_id, { aud: meta.token_endpoint });
  const { payload, header } = await verifyIdToken(tok.body.id_token, 'gate-jwt');
  check('private_key_jwt client gets tokens (aud = token endpoint)', tok.status === 200 && payload.sub === 'alice' && header.alg === 'RS256', { status: tok.status, payload });

  const ack2 = await bcAuthorize('gate-jwt', { scope: 'openid', login_hint: 'bob@example.com' });
  await ctl(`/requests/${ack2.body.auth_req_id}/approve`, 'POST');
  const tok2 = await tokenRequest('gate-jwt', ack2.body.auth_req_id, { aud: issuer });
  check('private_key_jwt token request with aud = issuer -> tokens', tok2.status === 200, { status: tok2.status });
  const hs = decodeProtectedHeader(await clientAssertion(issuer));
  wire.private_key_jwt_header = hs;
});

// ---------------------------------------------------------------- summary
op.kill('SIGTERM');
callbackServer.close();
const failed = checks.filter((c) => !c.ok);
const summary = {
  ok: failed.length === 0,
  passed: checks.length - failed.length,
  failed: failed.length,
  issuer,
  checks: checks.map((c) => (c.ok ? { name: c.name, ok: true } : c)),
  wire,
};
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
console.error(`oidc smoke: ${summary.passed} passed, ${summary.failed} failed`);
if (failed.length) console.error(opLog.join(''));
process.exit(failed.length ? 1 : 0);
