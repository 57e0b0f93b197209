"""Metric values after known calls, read from the monitoring port of a real server process."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.e2e.harness import ServerProcess, auth, create_credential, start_server


@pytest.fixture
def no_captcha_server(tmp_path: Path, server_env: dict[str, str]) -> Iterator[ServerProcess]:
    process = start_server(tmp_path, {**server_env, "APP__AUTH__CAPTCHA_ENABLED": "false"})
    try:
        process.wait_serving()
        yield process
    finally:
        process.terminate()


def scrape(process: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{process.http_port}/metrics", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}


def test_business_metrics_count_known_calls(no_captcha_server: ServerProcess) -> None:
    server = no_captcha_server
    token = create_credential(server.env, "svc-metrics", "kms.encrypt,kms.decrypt,kms.admin")
    with grpc.insecure_channel(server.target) as channel:
        kms = kms_pb2_grpc.KMSStub(channel)
        version = 0
        for _ in range(3):
            version = kms.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"v"), metadata=auth(token)).key_version
        with pytest.raises(grpc.RpcError):
            kms.Decrypt(kms_pb2.DecryptRequest(field="f", ciphertext=b"junk"), metadata=auth(token))
        items = [kms_pb2.EncryptItem(field="f", plaintext=b"a")] * 4 + [kms_pb2.EncryptItem(field="", plaintext=b"a")]
        batch = kms.EncryptBatch(kms_pb2.EncryptBatchRequest(items=items), metadata=auth(token))
        assert [r.status.code for r in batch.results] == [0, 0, 0, 0, grpc.StatusCode.INVALID_ARGUMENT.value[0]]
        users = auth_pb2_grpc.AuthStub(channel)
        with pytest.raises(grpc.RpcError):
            users.Login(auth_pb2.LoginRequest(username="nobody_here", password="wrong-pass-1"))
        users.GetCaptcha(auth_pb2.GetCaptchaRequest(captcha_type="image"))
    metrics = scrape(server)
    assert (
        metrics[f'kms_operations_total{{key_name="default",key_version="{version}",operation="encrypt",outcome="OK"}}']
        == 7
    )
    assert (
        metrics['kms_operations_total{key_name="",key_version="",operation="decrypt",outcome="CIPHERTEXT_INVALID"}']
        == 1
    )
    assert (
        metrics['kms_operations_total{key_name="default",key_version="",operation="encrypt",outcome="ITEM_ERROR"}'] == 1
    )
    assert metrics['auth_logins_total{outcome="INVALID_CREDENTIALS"}'] == 1
    assert metrics['auth_captchas_issued_total{type="image"}'] == 1
    assert metrics['grpc_server_handled_total{grpc_code="OK",grpc_method="Encrypt",grpc_service="kms.v1.KMS"}'] == 3
    assert metrics['grpc_server_in_flight{grpc_method="Encrypt",grpc_service="kms.v1.KMS"}'] == 0
    assert metrics["kms_active_key_version"] == version
    assert "db_queries_total" in " ".join(metrics)
