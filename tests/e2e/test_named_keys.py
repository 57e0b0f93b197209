"""Named keys through real server processes: the review's attacks on users' PII, cross-key isolation of every data
RPC, credentials scoped per key, scheduled destruction, rotation + maintenance keeping callers' ciphertexts, and two
replicas creating and rotating keys at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.e2e.harness import ServerProcess, auth, cli, credential, query, reason, start_server, unique

TIMEOUT = 10
USERS_KEY = "authkms.users"


def fails(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), reason(caught.value)


class Kms:
    """A kms.v1 stub with one credential."""

    def __init__(self, server: ServerProcess, token: str) -> None:
        self.channel = grpc.insecure_channel(server.target)
        self.stub = kms_pb2_grpc.KMSStub(self.channel)
        self.md = auth(token)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        rpc = getattr(self.stub, method)
        return lambda request: rpc(request, metadata=self.md, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def module_server(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("named-keys")
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "APP__DATA__REDIS__KEY_PREFIX": f"test:{uuid.uuid4().hex[:10]}:",
        "APP__DATA__DATA_DIR": str(tmp / "data"),
        "APP__AUTH__CAPTCHA_ENABLED": "false",
    }
    process = start_server(tmp, env)
    try:
        process.wait_serving()
        yield process
    finally:
        process.terminate()


def register_and_login(server: ServerProcess) -> tuple[int, str, dict[str, str]]:
    """A new user (with phone); returns (user id, access token, account)."""
    suffix = uuid.uuid4().hex[:8]
    account = {
        "username": f"nk_{suffix}",
        "password": f"Pw{uuid.uuid4().hex[:10]}x9",
        "email": f"nk.{suffix}@example.com",
        "phone": f"+86139{int(suffix, 16) % 10**8:08d}",
    }
    with grpc.insecure_channel(server.target) as channel:
        stub = auth_pb2_grpc.AuthStub(channel)
        stub.Register(auth_pb2.RegisterRequest(**account), timeout=TIMEOUT)
        login = stub.Login(
            auth_pb2.LoginRequest(username=account["username"], password=account["password"]), timeout=TIMEOUT
        )
        begin = auth_pb2.BeginTotpEnrollmentRequest()
        if "password" in begin.DESCRIPTOR.fields_by_name:
            begin = auth_pb2.BeginTotpEnrollmentRequest(password=account["password"])  # type: ignore[call-arg]
        stub.BeginTotpEnrollment(begin, metadata=auth(login.access_token), timeout=TIMEOUT)
    row = query(
        server.env["DATABASE_URL"], "SELECT id FROM users WHERE lower(username) = lower($1)", account["username"]
    )
    return int(row[0]["id"]), login.access_token, account


def users_row(server: ServerProcess, user_id: int) -> asyncpg.Record:
    return query(server.env["DATABASE_URL"], "SELECT * FROM users WHERE id = $1", user_id)[0]


# ---- the review's three attacks ---------------------------------------------------------------------------


def test_a_kms_credential_cannot_decrypt_a_users_row(module_server: ServerProcess) -> None:
    """With kms.decrypt on every key it may hold and a dumped users row, no PII (nor the TOTP seed) comes back."""
    user_id, _, _ = register_and_login(module_server)
    row = users_row(module_server, user_id)
    token = credential(module_server.env, "kms.decrypt,kms.encrypt", "default,orders,payments.*")
    kms = Kms(module_server, token)
    context = {"table": "users", "user_id": str(user_id)}
    columns = {"email": "email_encrypted", "phone": "phone_encrypted", "totp_secret": "totp_secret_encrypted"}
    for field, column in columns.items():
        assert row[column] is not None, column
        for key_name in ("", "default", "orders"):
            request = kms_pb2.DecryptRequest(ciphertext=bytes(row[column]), field=field, context=context)
            request.key_name = key_name
            code, why = fails(lambda r=request: kms.Decrypt(r))  # type: ignore[misc]
            # `orders` does not exist: allowed by the pattern, so the answer is "no such key"; never the value.
            assert (code, why) in {
                (grpc.StatusCode.INVALID_ARGUMENT, "CIPHERTEXT_INVALID"),
                (grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND"),
            }, (field, key_name, code, why)
        reserved = kms_pb2.DecryptRequest(
            ciphertext=bytes(row[column]), field=field, context=context, key_name=USERS_KEY
        )
        assert fails(lambda r=reserved: kms.Decrypt(r)) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")  # type: ignore[misc]
        batch = kms_pb2.DecryptBatchRequest(
            items=[kms_pb2.DecryptItem(ciphertext=bytes(row[column]), field=field, context=context)]
        )
        result = kms.DecryptBatch(batch).results[0]
        assert result.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not result.plaintext
        rewrap = kms_pb2.RewrapRequest(ciphertext=bytes(row[column]), field=field, context=context)
        assert fails(lambda r=rewrap: kms.Rewrap(r)) == (grpc.StatusCode.INVALID_ARGUMENT, "CIPHERTEXT_INVALID")  # type: ignore[misc]


def test_a_kms_credential_cannot_forge_a_users_row(module_server: ServerProcess) -> None:
    """A ciphertext made with kms.encrypt for bob's field and context, written into bob's row, is refused."""
    bob_id, bob_token, _ = register_and_login(module_server)
    kms = Kms(module_server, credential(module_server.env, "kms.encrypt"))
    context = {"table": "users", "user_id": str(bob_id)}
    forged = kms.Encrypt(kms_pb2.EncryptRequest(field="email", plaintext=b"attacker@evil.example", context=context))
    original = users_row(module_server, bob_id)["email_encrypted"]
    update = "UPDATE users SET email_encrypted = $2 WHERE id = $1"
    query(module_server.env["DATABASE_URL"], update, bob_id, forged.ciphertext)
    try:
        with grpc.insecure_channel(module_server.target) as channel:
            stub = auth_pb2_grpc.AuthStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=auth(bob_token), timeout=TIMEOUT)
        # Refused either way: no version of the users' key has that number, or it has and the AD differs.
        assert reason(caught.value) in {"CIPHERTEXT_INVALID", "KEY_NOT_FOUND"}
        assert "evil" not in str(caught.value.details())
    finally:  # leave no corrupt row behind for other tests' maintenance runs
        query(module_server.env["DATABASE_URL"], update, bob_id, original)


def test_hash_field_is_no_oracle_against_users_hashes(module_server: ServerProcess) -> None:
    """No credential obtains a hash equal to users.email_hash / phone_hash, under any key it can use."""
    user_id, _, account = register_and_login(module_server)
    row = users_row(module_server, user_id)
    admin = Kms(module_server, credential(module_server.env, "kms.admin", "hashes.*"))
    own_key = unique("hashes.k")
    admin.CreateKey(kms_pb2.CreateKeyRequest(name=own_key))
    kms = Kms(module_server, credential(module_server.env, "kms.encrypt", "default,hashes.*"))
    for field, column in (("email", "email_hash"), ("phone", "phone_hash")):
        for key_name in ("", "default", own_key):
            reply = kms.HashField(kms_pb2.HashFieldRequest(field=field, value=account[field], key_name=key_name))
            assert len(reply.hash) == 64 and reply.hash != row[column].strip(), (field, key_name)
        reserved = kms_pb2.HashFieldRequest(field=field, value=account[field], key_name=USERS_KEY)
        assert fails(lambda r=reserved: kms.HashField(r)) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")  # type: ignore[misc]


# ---- isolation between keys ---------------------------------------------------------------------------------


def test_every_data_rpc_is_isolated_between_keys(module_server: ServerProcess) -> None:
    """Two keys whose versions share the number 1: nothing made under one opens or matches under the other."""
    admin = Kms(module_server, credential(module_server.env, "kms.admin", "iso.*"))
    key_a, key_b = unique("iso.a"), unique("iso.b")
    for name in (key_a, key_b):
        assert admin.CreateKey(kms_pb2.CreateKeyRequest(name=name)).key.active_version == 1
    kms = Kms(module_server, credential(module_server.env, "kms.encrypt,kms.decrypt", "default,iso.*"))
    ctx = {"order": "42"}
    sealed = kms.Encrypt(kms_pb2.EncryptRequest(key_name=key_a, field="card", plaintext=b"4111", context=ctx))
    assert sealed.key_version == 1
    opened = kms.Decrypt(
        kms_pb2.DecryptRequest(key_name=key_a, field="card", ciphertext=sealed.ciphertext, context=ctx)
    )
    assert opened.plaintext == b"4111"

    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "CIPHERTEXT_INVALID")
    wrong = kms_pb2.DecryptRequest(key_name=key_b, field="card", ciphertext=sealed.ciphertext, context=ctx)
    assert fails(lambda: kms.Decrypt(wrong)) == invalid
    rewrap = kms_pb2.RewrapRequest(key_name=key_b, field="card", ciphertext=sealed.ciphertext, context=ctx)
    assert fails(lambda: kms.Rewrap(rewrap)) == invalid
    on_default = kms_pb2.DecryptRequest(field="card", ciphertext=sealed.ciphertext, context=ctx)
    assert (
        fails(lambda: Kms(module_server, credential(module_server.env, "kms.decrypt")).Decrypt(on_default)) == invalid
    )

    batch = kms.EncryptBatch(
        kms_pb2.EncryptBatchRequest(
            key_name=key_a, items=[kms_pb2.EncryptItem(field="card", plaintext=b"x", context=ctx)]
        )
    )
    item = kms_pb2.DecryptItem(field="card", ciphertext=batch.results[0].ciphertext, context=ctx)
    assert kms.DecryptBatch(kms_pb2.DecryptBatchRequest(key_name=key_a, items=[item])).results[0].plaintext == b"x"
    crossed = kms.DecryptBatch(kms_pb2.DecryptBatchRequest(key_name=key_b, items=[item])).results[0]
    assert crossed.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not crossed.plaintext

    hashes = {
        n: kms.HashField(kms_pb2.HashFieldRequest(key_name=n, field="email", value="a@b.example")).hash
        for n in (key_a, key_b, "")
    }
    assert len(set(hashes.values())) == 3


def test_credential_key_patterns(module_server: ServerProcess) -> None:
    """Exact names and prefix.* grant keys; anything else, existing or not, answers the same PERMISSION_DENIED."""
    admin = Kms(module_server, credential(module_server.env, "kms.admin", "orders,payments.*,other"))
    suffix = uuid.uuid4().hex[:6]
    orders, payments, other = "orders", f"payments.eu{suffix}", "other"
    for name in (orders, payments, other):
        try:
            admin.CreateKey(kms_pb2.CreateKeyRequest(name=name))
        except grpc.RpcError as err:  # the module's other tests may have made it already
            assert reason(err) == "KEY_EXISTS"
    kms = Kms(module_server, credential(module_server.env, "kms.encrypt", "orders,payments.*"))
    for name in (orders, payments):
        assert kms.Encrypt(kms_pb2.EncryptRequest(key_name=name, field="f", plaintext=b"v")).key_version >= 1
    denied = (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    for name in ("", "default", other, f"paymentsx{suffix}", f"nowhere{suffix}", "payments", USERS_KEY):
        request = kms_pb2.EncryptRequest(key_name=name, field="f", plaintext=b"v")
        assert fails(lambda r=request: kms.Encrypt(r)) == denied, name  # type: ignore[misc]
    missing = kms_pb2.EncryptRequest(key_name=f"payments.none{suffix}", field="f", plaintext=b"v")
    assert fails(lambda: kms.Encrypt(missing)) == (grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND")
    malformed = kms_pb2.EncryptRequest(key_name="Bad Name", field="f", plaintext=b"v")
    assert fails(lambda: kms.Encrypt(malformed)) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR")
    # A credential made without --keys (as every credential before named keys) works on `default` only.
    plain = Kms(module_server, credential(module_server.env, "kms.encrypt"))
    assert plain.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"v")).key_version >= 1
    assert fails(lambda: plain.Encrypt(kms_pb2.EncryptRequest(key_name=orders, field="f", plaintext=b"v"))) == denied
    listed = {k.name for k in admin.ListKeys(kms_pb2.ListKeysRequest()).keys}
    assert {orders, payments, other} <= listed and "default" not in listed and USERS_KEY not in listed
    bad = cli(
        module_server.env,
        "credentials",
        "create",
        "--name",
        unique("svc-"),
        "--scopes",
        "kms.encrypt",
        "--keys",
        "authkms.*",
    )
    assert bad.returncode != 0 and "reserved" in bad.stderr


# ---- destruction only on purpose ----------------------------------------------------------------------------


def test_scheduled_destruction_is_pending_then_cancellable(module_server: ServerProcess) -> None:
    admin = Kms(module_server, credential(module_server.env, "kms.admin,kms.encrypt,kms.decrypt", "destroy.*"))
    name = unique("destroy.k")
    admin.CreateKey(kms_pb2.CreateKeyRequest(name=name))
    sealed = admin.Encrypt(kms_pb2.EncryptRequest(key_name=name, field="f", plaintext=b"keep me"))
    decrypt = kms_pb2.DecryptRequest(key_name=name, field="f", ciphertext=sealed.ciphertext)
    active = kms_pb2.ScheduleKeyDestructionRequest(key_name=name, version=1)
    assert fails(lambda: admin.ScheduleKeyDestruction(active)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "KEY_STATE_INVALID",
    )
    admin.RotateDataKey(kms_pb2.RotateDataKeyRequest(key_name=name, reason="before destroying v1"))
    short = kms_pb2.ScheduleKeyDestructionRequest(key_name=name, version=1, waiting_period_seconds=3600)
    assert fails(lambda: admin.ScheduleKeyDestruction(short)) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR")

    pending = admin.ScheduleKeyDestruction(kms_pb2.ScheduleKeyDestructionRequest(key_name=name, version=1)).key
    assert pending.status == "pending_destruction"
    assert 29 * 86400 < pending.destroy_after - pending.updated_at <= 30 * 86400 + 5
    with pytest.raises(grpc.RpcError) as caught:
        admin.Decrypt(decrypt)
    assert (
        caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(caught.value) == "KEY_PENDING_DESTRUCTION"
    )
    # Maintenance does not destroy it before its time.
    assert admin.PerformMaintenance(kms_pb2.PerformMaintenanceRequest(key_name=name)).keys_destroyed == 0

    restored = admin.CancelKeyDestruction(kms_pb2.CancelKeyDestructionRequest(key_name=name, version=1)).key
    assert restored.status == "inactive" and restored.destroy_after == 0
    assert admin.Decrypt(decrypt).plaintext == b"keep me"
    again = kms_pb2.CancelKeyDestructionRequest(key_name=name, version=1)
    assert fails(lambda: admin.CancelKeyDestruction(again)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "KEY_STATE_INVALID",
    )


def test_scheduled_rotation_and_maintenance_never_break_a_callers_ciphertext(
    tmp_path: Path, server_env: dict[str, str], own_database: str
) -> None:
    """`default` rotates every 2 s, so retired versions are soon past expires_at; maintenance (RPC and CLI) keeps
    every one of them: only a scheduled destruction removes a caller's version."""
    env = {
        **server_env,
        "DATABASE_URL": own_database,
        "APP__KMS__ROTATE_INTERVAL": "2s",
        "APP__KMS__CACHE_RECHECK_INTERVAL": "200ms",
    }
    server = start_server(tmp_path, env)
    try:
        server.wait_serving()
        kms = Kms(server, credential(server.env, "kms.encrypt,kms.decrypt,kms.admin"))
        sealed = [kms.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"first", context={"id": "1"}))]
        first_version = sealed[0].key_version
        deadline = time.monotonic() + 30
        while kms.GetActiveDataKey(kms_pb2.GetActiveDataKeyRequest()).key.version < first_version + 3:
            assert time.monotonic() < deadline, "default did not rotate on its interval"
            sealed.append(kms.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"later", context={"id": "1"})))
            time.sleep(0.5)
        for _ in range(3):
            kms.PerformMaintenance(kms_pb2.PerformMaintenanceRequest())
        maintained = cli(server.env, "kms", "maintenance")
        assert maintained.returncode == 0, maintained.stderr[-2000:]
        statuses = {k.version: k.status for k in kms.ListDataKeys(kms_pb2.ListDataKeysRequest(page_size=500)).keys}
        assert statuses[first_version] == "expired" and "revoked" not in statuses.values()
        for item in sealed:
            request = kms_pb2.DecryptRequest(field="f", ciphertext=item.ciphertext, context={"id": "1"})
            assert kms.Decrypt(request).plaintext in (b"first", b"later")
    finally:
        server.terminate()


# ---- replicas ------------------------------------------------------------------------------------------------


def test_two_replicas_create_rotate_and_destroy_keys_concurrently(tmp_path: Path, server_env: dict[str, str]) -> None:
    env = {**server_env, "APP__KMS__CACHE_RECHECK_INTERVAL": "2s"}
    servers = [start_server(tmp_path, env) for _ in range(2)]
    try:
        for server in servers:
            server.wait_serving()
        token = credential(servers[0].env, "kms.admin,kms.encrypt,kms.decrypt", "race.*")
        a, b = (Kms(s, token) for s in servers)
        names = [unique("race.k") for _ in range(4)]

        def create(client: Kms, name: str) -> str:
            try:
                client.CreateKey(kms_pb2.CreateKeyRequest(name=name))
                return "created"
            except grpc.RpcError as err:
                return reason(err)

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(lambda job: create(*job), [(c, n) for n in names for c in (a, b)]))
        assert sorted(outcomes) == sorted(["created", "KEY_EXISTS"] * len(names))

        def rotate(client: Kms, name: str) -> int:
            return int(client.RotateDataKey(kms_pb2.RotateDataKeyRequest(key_name=name, reason="race")).key.version)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda job: rotate(*job), [(c, n) for n in names for c in (a, b, a, b)]))
        rows = query(
            servers[0].env["DATABASE_URL"],
            "SELECT key_name, count(*) FILTER (WHERE status = 'active') AS active, max(version) AS latest "
            "FROM kms_data_keys WHERE key_name = ANY($1) GROUP BY key_name",
            names,
        )
        assert len(rows) == len(names) and all(r["active"] == 1 for r in rows)
        latest = {r["key_name"]: int(r["latest"]) for r in rows}

        # Each replica encrypts under the newest version within the documented bound.
        deadline = time.monotonic() + 5
        for name in names:
            for client in (a, b):
                while (
                    version := client.Encrypt(
                        kms_pb2.EncryptRequest(key_name=name, field="f", plaintext=b"v")
                    ).key_version
                ) != latest[name]:
                    assert time.monotonic() < deadline, (name, version, latest[name])
                    time.sleep(0.1)

        # A destruction scheduled on one replica is refused by the other within the bound; cancelled likewise.
        name = names[0]
        old = a.Encrypt(kms_pb2.EncryptRequest(key_name=name, field="f", plaintext=b"old"))
        a.RotateDataKey(kms_pb2.RotateDataKeyRequest(key_name=name))
        decrypt = kms_pb2.DecryptRequest(key_name=name, field="f", ciphertext=old.ciphertext)
        assert b.Decrypt(decrypt).plaintext == b"old"
        a.ScheduleKeyDestruction(kms_pb2.ScheduleKeyDestructionRequest(key_name=name, version=old.key_version))
        deadline = time.monotonic() + 5
        while True:
            try:
                b.Decrypt(decrypt)
            except grpc.RpcError as err:
                assert reason(err) == "KEY_PENDING_DESTRUCTION"
                break
            assert time.monotonic() < deadline, "the other replica kept decrypting a version pending destruction"
            time.sleep(0.1)
        a.CancelKeyDestruction(kms_pb2.CancelKeyDestructionRequest(key_name=name, version=old.key_version))
        deadline = time.monotonic() + 5
        while True:
            try:
                assert b.Decrypt(decrypt).plaintext == b"old"
                break
            except grpc.RpcError as err:
                assert reason(err) == "KEY_PENDING_DESTRUCTION"
                assert time.monotonic() < deadline, "the other replica did not see the cancellation"
                time.sleep(0.1)
    finally:
        for server in servers:
            server.terminate()
