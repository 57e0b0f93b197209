#!/usr/bin/env node
// A third-party client for auth.v1.Auth: @grpc/grpc-js + @grpc/proto-loader, loading the .proto
// files from api/proto (nothing generated). Runs register -> login -> profile -> refresh ->
// refresh-token reuse -> logout -> refused against a server with captcha disabled, and prints a
// JSON summary on stdout. It never prints a token, password or PII. Exits non-zero on any failure.
//
// Usage: node client.js <host:port> [<dir containing google/api/annotations.proto>]
//   The include dir may also come from GOOGLE_PROTOS_DIR. Account data comes from the environment:
//   AUTH_USERNAME, AUTH_PASSWORD, AUTH_EMAIL, AUTH_PHONE (optional).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const API_PROTO = path.resolve(__dirname, '..', '..', '..', 'api', 'proto');
const LOAD_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function fail(message) {
  process.stderr.write(`node client: ${message}\n`);
  process.exit(1);
}

function required(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

const address = process.argv[2];
const googleProtos = process.argv[3] || process.env.GOOGLE_PROTOS_DIR;
if (!address) fail('usage: node client.js <host:port> [<google protos include dir>]');
if (!googleProtos) fail('pass the include dir holding google/api/annotations.proto (argument or GOOGLE_PROTOS_DIR)');

const definition = protoLoader.loadSync(
  'auth/v1/auth.proto',
  { ...LOAD_OPTIONS, includeDirs: [API_PROTO, googleProtos] },
);
const loaded = grpc.loadPackageDefinition(definition);
const client = new loaded.auth.v1.Auth(address, grpc.credentials.createInsecure());

// google.rpc.Status / ErrorInfo decoding from the `grpc-status-details-bin` trailer (Kratos error model).
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(googleProtos, target));
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const StatusType = rpcRoot.lookupType('google.rpc.Status');
const ErrorInfoType = rpcRoot.lookupType('google.rpc.ErrorInfo');

function errorReason(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return '';
  const status = StatusType.decode(raw);
  for (const detail of status.details || []) {
    if (detail.type_url === 'type.googleapis.com/google.rpc.ErrorInfo') {
      return ErrorInfoType.decode(detail.value).reason;
    }
  }
  return '';
}

function codeName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

function call(method, request, token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  const deadline = new Date(Date.now() + 15000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function expectError(method, request, token) {
  try {
    await call(method, request, token);
  } catch (err) {
    return { code: codeName(err.code), reason: errorReason(err) };
  }
  throw new Error(`${method} succeeded but an error was expected`);
}

function jwtParts(token) {
  return typeof token === 'string' ? token.split('.').length : 0;
}

async function main() {
  const account = {
    username: required('AUTH_USERNAME'),
    password: required('AUTH_PASSWORD'),
    email: required('AUTH_EMAIL'),
    phone: process.env.AUTH_PHONE || '',
  };
  const summary = { client: `grpc-js ${require('@grpc/grpc-js/package.json').version}` };

  const registered = await call('Register', { ...account, captcha_id: '', captcha_code: '' });
  summary.register = { message: registered.message };

  const login = await call('Login', { username: account.email, password: account.password });
  summary.login = { jwt_parts: jwtParts(login.access_token), expires_in: Number(login.expires_in),
    has_refresh_token: login.refresh_token.length > 0 };

  const profile = await call('GetProfile', {}, login.access_token);
  summary.profile = { username: profile.username, email_masked: profile.email_masked,
    phone_masked: profile.phone_masked };

  const refreshed = await call('RefreshToken', { refresh_token: login.refresh_token });
  summary.refresh = {
    jwt_parts: jwtParts(refreshed.access_token),
    expires_in: Number(refreshed.expires_in),
    rotated: refreshed.refresh_token !== login.refresh_token && refreshed.access_token !== login.access_token,
  };

  const logout = await call('Logout', {}, refreshed.access_token);
  summary.logout = { success: logout.success };
  summary.after_logout = await expectError('GetProfile', {}, refreshed.access_token);
  summary.refresh_after_logout = await expectError('RefreshToken', { refresh_token: refreshed.refresh_token });
  summary.no_token = await expectError('Logout', {});
  return summary;
}

main()
  .then((summary) => {
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    client.close();
  })
  .catch((err) => {
    const detail = err && err.code !== undefined ? `${codeName(err.code)} ${errorReason(err)}: ${err.details}` : err;
    client.close();
    fail(`failed: ${detail && detail.stack ? detail.stack : detail}`);
  });
