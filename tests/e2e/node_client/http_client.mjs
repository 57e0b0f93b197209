#!/usr/bin/env node
// A browser-style client of the HTTP/JSON API: only `fetch` (as a web page has it) and the npm package `jose`
// (createRemoteJWKSet + jwtVerify, as web back ends verify tokens). Runs captcha -> register -> login ->
// profile -> token verification over JWKS -> refresh -> lock-status -> logout -> lock-status (refused)
// against a server with captcha enabled. Email and sms captcha codes are asked for on stdout
// ({"need_code": "email" | "sms"}) and read from stdin, one line each: the person reading the mail or the text.
// Register proves both the email and the phone with a code sent to each (docs/security.md).
// The last stdout line is a JSON summary without any token, password, code or PII. Exits non-zero on failure.
//
// Usage: node http_client.mjs <base url, e.g. http://127.0.0.1:8000>
//   Account data from the environment: AUTH_USERNAME, AUTH_PASSWORD, AUTH_EMAIL, AUTH_PHONE.
import { createInterface } from 'node:readline';
import { createRemoteJWKSet, jwtVerify } from 'jose';

function fail(message) {
  process.stderr.write(`node http client: ${message}\n`);
  process.exit(1);
}

function required(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

const base = process.argv[2];
if (!base) fail('usage: node http_client.mjs <base url>');
const account = {
  username: required('AUTH_USERNAME'),
  password: required('AUTH_PASSWORD'),
  email: required('AUTH_EMAIL'),
  phone: required('AUTH_PHONE'),
};

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function askCode(kind) {
  process.stdout.write(`${JSON.stringify({ need_code: kind })}\n`);
  const { value, done } = await lines.next();
  if (done) fail('stdin closed before a code came');
  return value.trim();
}

async function call(method, path, { body, token } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get('content-type') || '';
  if (!type.startsWith('application/json')) fail(`${method} ${path}: content-type ${type}`);
  return { status: response.status, json: await response.json() };
}

async function ok(method, path, options) {
  const { status, json } = await call(method, path, options);
  if (status !== 200) fail(`${method} ${path}: HTTP ${status} ${json.reason}`);
  return json;
}

async function refused(method, path, options) {
  const { status, json } = await call(method, path, options);
  if (status === 200) fail(`${method} ${path}: expected an error`);
  return { status, reason: json.reason, has_message: typeof json.message === 'string' };
}

async function emailCaptcha() {
  const query = new URLSearchParams({ captcha_type: 'email', target: account.email });
  const captcha = await ok('GET', `/api/v1/auth/captcha?${query}`);
  return { captchaId: captcha.captchaId, captchaCode: await askCode('email') };
}

async function phoneCaptcha() {
  const query = new URLSearchParams({ captcha_type: 'sms', target: account.phone });
  const captcha = await ok('GET', `/api/v1/auth/captcha?${query}`);
  return { phoneCaptchaId: captcha.captchaId, phoneCaptchaCode: await askCode('sms') };
}

function jwtParts(token) {
  return token.split('.').length;
}

const summary = {};

const image = await ok('GET', '/api/v1/auth/captcha?captcha_type=image');
summary.captcha = {
  has_id: image.captchaId.length > 0,
  data_uri: image.imageData.startsWith('data:image/png;base64,'),
  png: Buffer.from(image.imageData.split(',')[1], 'base64').subarray(1, 4).toString() === 'PNG',
};

const registered = await ok('POST', '/api/v1/auth/register', {
  body: {
    username: account.username,
    password: account.password,
    email: account.email,
    phone: account.phone,
    ...(await emailCaptcha()),
    ...(await phoneCaptcha()),
  },
});
summary.register = { message: registered.message };

const login = await ok('POST', '/api/v1/auth/login', {
  body: { username: account.email, password: account.password, ...(await emailCaptcha()) },
});
summary.login = {
  jwt_parts: jwtParts(login.accessToken),
  expires_in: login.expiresIn,
  has_refresh_token: login.refreshToken.length > 0,
};

const profile = await ok('GET', '/api/v1/auth/profile', { token: login.accessToken });
summary.profile = {
  username: profile.username,
  email_masked_matches: profile.emailMasked.startsWith(`${account.email[0]}***@`),
  fields: Object.keys(profile).sort(),
};

const jwks = createRemoteJWKSet(new URL(`${base}/.well-known/jwks.json`));
const verified = await jwtVerify(login.accessToken, jwks, { issuer: 'authkms', audience: 'authkms-clients' });
summary.jose = { alg: verified.protectedHeader.alg, username: verified.payload.username };

const refreshed = await ok('POST', '/api/v1/auth/refresh', { body: { refreshToken: login.refreshToken } });
summary.refresh = {
  jwt_parts: jwtParts(refreshed.accessToken),
  rotated: refreshed.refreshToken !== login.refreshToken,
};

const lock = await ok('GET', `/api/v1/auth/lock-status/${encodeURIComponent(account.username)}`, {
  token: refreshed.accessToken,
});
summary.lock_status = lock;

summary.logout = await ok('POST', '/api/v1/auth/logout', { body: {}, token: refreshed.accessToken });
summary.lock_status_after_logout = await refused(
  'GET',
  `/api/v1/auth/lock-status/${encodeURIComponent(account.username)}`,
  { token: refreshed.accessToken },
);
summary.no_token = await refused('GET', '/api/v1/auth/profile');

process.stdout.write(`${JSON.stringify(summary)}\n`);
process.exit(0);
