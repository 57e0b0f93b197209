"""kms.v1 through real server processes: credentials from the CLI, scopes, the error model, rotation
seen by another replica, and a third-party client (`buf curl`) using reflection only."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.e2e.harness import ServerProcess, auth, buf_curl, cli, create_credential, reason, start_server


@pytest.fixture
def replicas(tmp_path: Path, server_env: dict[str, str]) -> Iterator[list[ServerProcess]]:
    """Two replicas on one database and Redis prefix."""
    env = {**server_env, "APP__KMS__CACHE_RECHECK_INTERVAL": "2s"}
    processes = [start_server(tmp_path, env) for _ in range(2)]
    try:
        for process in processes:
            process.wait_serving()
        yield processes
    finally:
        for process in processes:
            process.terminate()


def test_kms_over_grpc_with_scoped_credentials(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    full = create_credential(a.env, "svc-full", "kms.encrypt,kms.decrypt,kms.admin")
    decrypt_only = create_credential(a.env, "svc-reader", "kms.decrypt")
    with grpc.insecure_channel(a.target) as chan_a, grpc.insecure_channel(b.target) as chan_b:
        kms_a, kms_b = kms_pb2_grpc.KMSStub(chan_a), kms_pb2_grpc.KMSStub(chan_b)
        context = {"tenant": "t1", "record": "42"}
        sealed = kms_a.Encrypt(
            kms_pb2.EncryptRequest(field="email", plaintext=b"alice@example.com", context=context), metadata=auth(full)
        )
        assert sealed.algorithm == "AES-256-GCM" and sealed.key_version >= 1
        opened = kms_b.Decrypt(
            kms_pb2.DecryptRequest(ciphertext=sealed.ciphertext, field="email", context=context),
            metadata=auth(decrypt_only),
        )
        assert opened.plaintext == b"alice@example.com"

        expectations = [
            (
                lambda: kms_a.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"x")),
                "UNAUTHENTICATED",
                "CREDENTIALS_MISSING",
            ),
            (
                lambda: kms_a.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"x"), metadata=auth("akms_forged")),
                "UNAUTHENTICATED",
                "CREDENTIALS_INVALID",
            ),
            (
                lambda: kms_a.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"x"), metadata=auth(decrypt_only)),
                "PERMISSION_DENIED",
                "PERMISSION_DENIED",
            ),
            (
                lambda: kms_a.Decrypt(
                    kms_pb2.DecryptRequest(ciphertext=sealed.ciphertext, field="phone", context=context),
                    metadata=auth(full),
                ),
                "INVALID_ARGUMENT",
                "CIPHERTEXT_INVALID",
            ),
            (
                lambda: kms_a.Decrypt(
                    kms_pb2.DecryptRequest(ciphertext=sealed.ciphertext[:-1] + b"\0", field="email", context=context),
                    metadata=auth(full),
                ),
                "INVALID_ARGUMENT",
                "CIPHERTEXT_INVALID",
            ),
            (
                lambda: kms_a.GetDataKey(kms_pb2.GetDataKeyRequest(version=9999), metadata=auth(full)),
                "NOT_FOUND",
                "KEY_NOT_FOUND",
            ),
            (
                lambda: kms_a.Encrypt(
                    kms_pb2.EncryptRequest(field="f", plaintext=b"x" * (64 * 1024 + 1)), metadata=auth(full)
                ),
                "INVALID_ARGUMENT",
                "PLAINTEXT_TOO_LARGE",
            ),
        ]
        for call, code, why in expectations:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code().name == code, (why, caught.value.details())
            assert reason(caught.value) == why

        batch = kms_a.EncryptBatch(
            kms_pb2.EncryptBatchRequest(
                items=[
                    kms_pb2.EncryptItem(field="name", plaintext=b"Bob"),
                    kms_pb2.EncryptItem(field="", plaintext=b"?"),
                ]
            ),
            metadata=auth(full),
        )
        assert batch.results[0].status.code == 0 and batch.results[0].ciphertext
        assert batch.results[1].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

        info = kms_a.GetActiveDataKey(kms_pb2.GetActiveDataKeyRequest(), metadata=auth(full)).key
        assert not hasattr(info, "key") and info.status == "active"


def test_rotation_on_one_replica_is_honoured_by_the_other(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    token = create_credential(a.env, "svc-rotate", "kms.encrypt,kms.decrypt,kms.admin")
    with grpc.insecure_channel(a.target) as chan_a, grpc.insecure_channel(b.target) as chan_b:
        kms_a, kms_b = kms_pb2_grpc.KMSStub(chan_a), kms_pb2_grpc.KMSStub(chan_b)
        before = kms_b.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"v"), metadata=auth(token))
        rotated = kms_a.RotateDataKey(kms_pb2.RotateDataKeyRequest(reason="test"), metadata=auth(token)).key
        assert rotated.version == before.key_version + 1
        started = time.monotonic()
        while True:
            after = kms_b.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"v"), metadata=auth(token))
            if after.key_version == rotated.version:
                break
            assert time.monotonic() - started < 2.5, "replica B kept encrypting with the retired key"
            time.sleep(0.05)
        old = kms_a.Decrypt(kms_pb2.DecryptRequest(ciphertext=before.ciphertext, field="f"), metadata=auth(token))
        assert old.plaintext == b"v" and old.key_version == before.key_version
        keys = kms_b.ListDataKeys(kms_pb2.ListDataKeysRequest(), metadata=auth(token)).keys
        assert [k.status for k in keys].count("active") == 1


def test_cli_rotation_status_revocation_and_exit_codes(server: ServerProcess) -> None:
    env = server.env
    token = create_credential(env, "svc-cli", "kms.encrypt,kms.admin")
    status = cli(env, "kms", "status")
    assert status.returncode == 0 and "key default: algorithm AES-256-GCM, active version" in status.stdout
    rotate = cli(env, "kms", "rotate", "--reason", "cli-test")
    assert rotate.returncode == 0 and "key default: active version is now" in rotate.stdout
    maintenance = cli(env, "kms", "maintenance", "--dry-run")
    assert maintenance.returncode == 0 and "expired marked" in maintenance.stdout, maintenance.stderr
    # A named key through its whole life on the CLI.
    created = cli(env, "kms", "create", "cli.orders", "--description", "from the CLI")
    assert created.returncode == 0 and "created key cli.orders (active version 1" in created.stdout, created.stderr
    assert cli(env, "kms", "create", "cli.orders").returncode == 1
    rotated = cli(env, "kms", "rotate", "--key", "cli.orders")
    assert rotated.returncode == 0 and "key cli.orders: active version is now 2" in rotated.stdout
    status = cli(env, "kms", "status", "--key", "cli.orders")
    assert status.returncode == 0 and "key cli.orders: algorithm AES-256-GCM, active version 2" in status.stdout
    scheduled = cli(env, "kms", "schedule-destroy", "--key", "cli.orders", "--version", "1", "--wait-days", "8")
    assert scheduled.returncode == 0 and "key cli.orders version 1: destruction scheduled for" in scheduled.stdout
    too_soon = cli(env, "kms", "schedule-destroy", "--key", "cli.orders", "--version", "2")
    assert too_soon.returncode == 1 and "KEY_STATE_INVALID" in too_soon.stderr  # the active version
    cancelled = cli(env, "kms", "cancel-destroy", "--key", "cli.orders", "--version", "1")
    assert cancelled.returncode == 0 and "destruction cancelled, status inactive" in cancelled.stdout
    maintained = cli(env, "kms", "maintenance", "--key", "cli.orders")
    assert maintained.returncode == 0 and "versions destroyed 0" in maintained.stdout, maintained.stderr
    for bad in (("kms", "status", "--key", "Not A Key"), ("kms", "create", "authkms.mine")):
        refused = cli(env, *bad)
        assert refused.returncode == 1 and "VALIDATION_ERROR" in refused.stderr, bad
    listed = cli(env, "credentials", "list")
    assert "svc-cli" in listed.stdout and token not in listed.stdout
    assert cli(env, "credentials", "revoke", "--name", "svc-cli").returncode == 0
    missing = cli(env, "credentials", "revoke", "--name", "no-such-credential")
    assert missing.returncode == 1 and "CREDENTIAL_NOT_FOUND" in missing.stderr
    bad_scope = cli(env, "credentials", "create", "--name", "svc-bad", "--scopes", "root")
    assert bad_scope.returncode == 1 and "VALIDATION_ERROR" in bad_scope.stderr
    unknown_user = cli(env, "users", "unlock", "nobody_here")
    assert unknown_user.returncode == 1 and "USER_NOT_FOUND" in unknown_user.stderr
    with grpc.insecure_channel(server.target) as channel:
        stub = kms_pb2_grpc.KMSStub(channel)
        deadline = time.monotonic() + 8  # credential cache TTL is 5 s
        while True:
            try:
                stub.GetStatus(kms_pb2.GetStatusRequest(), metadata=auth(token))
            except grpc.RpcError as err:
                assert reason(err) == "CREDENTIALS_INVALID"
                break
            assert time.monotonic() < deadline, "revoked credential still accepted"
            time.sleep(0.25)


def test_buf_curl_encrypts_through_reflection(server: ServerProcess) -> None:
    token = create_credential(server.env, "svc-buf", "kms.encrypt,kms.decrypt")
    body = json.dumps({"field": "email", "plaintext": base64.b64encode(b"bob@example.com").decode()})
    result = buf_curl(server.grpc_port, "kms.v1.KMS/Encrypt", body, headers=(f"Authorization: Bearer {token}",))
    assert result.returncode == 0, result.stderr
    sealed = json.loads(result.stdout)
    body = json.dumps({"field": "email", "ciphertext": sealed["ciphertext"]})
    result = buf_curl(server.grpc_port, "kms.v1.KMS/Decrypt", body, headers=(f"Authorization: Bearer {token}",))
    assert base64.b64decode(json.loads(result.stdout)["plaintext"]) == b"bob@example.com"
    denied = buf_curl(server.grpc_port, "kms.v1.KMS/RotateDataKey", "{}", headers=(f"Authorization: Bearer {token}",))
    assert denied.returncode == grpc.StatusCode.PERMISSION_DENIED.value[0] * 8
