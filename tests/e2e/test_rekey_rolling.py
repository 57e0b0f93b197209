"""The rolling root-key rotation of docs/operations.md, end to end, with three replicas under load:

1. restart each replica with the new seed and the previous one,
2. run `kms rekey` until nothing remains under the previous root key,
3. restart each replica with the new seed only.

No request fails at any step (a replica being restarted is out of the rotation, as behind a balancer), every
ciphertext written before, during and after still decrypts, and logins by email and by phone keep working. Afterwards
a replica with only the old seed refuses to start, clearly."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.e2e.harness import ServerProcess, auth, cli, credential, start_server

OLD = {"APP__KMS__SEED": "rolling-old-seed-0123456789", "APP__KMS__SALT": "rolling-old-salt"}
NEW = {"APP__KMS__SEED": "rolling-new-seed-9876543210", "APP__KMS__SALT": "rolling-new-salt"}
TRANSITION = {**NEW, "APP__KMS__PREVIOUS_SEED": OLD["APP__KMS__SEED"], "APP__KMS__PREVIOUS_SALT": OLD["APP__KMS__SALT"]}
PASSWORD = "rolling-Pass-2026"
VERSIONS = 300


class Fleet:
    """Replicas with a client load that only uses the ones in rotation."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.replicas: list[ServerProcess] = []
        self.in_rotation: list[ServerProcess] = []
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.sealed: list[tuple[bytes, bytes]] = []
        self.logins = 0
        self.stop = threading.Event()
        self.token = ""
        self.users: list[tuple[str, str]] = []

    def start(self, settings: dict[str, str]) -> ServerProcess:
        server = start_server(self.tmp_path, {**self.env, **settings})
        server.wait_serving()
        return server

    def replace(self, index: int, settings: dict[str, str]) -> None:
        """Take replica ``index`` out of rotation, stop it (drain), start it with ``settings``, put it back."""
        old = self.replicas[index]
        with self.lock:
            self.in_rotation.remove(old)
        time.sleep(0.3)  # calls already sent to it finish
        assert old.terminate() == 0
        new = self.start(settings)
        self.replicas[index] = new
        with self.lock:
            self.in_rotation.append(new)

    def pick(self) -> ServerProcess:
        with self.lock:
            return random.choice(self.in_rotation)

    def load(self) -> None:
        md = auth(self.token)
        turn = 0
        while not self.stop.is_set():
            server = self.pick()
            with grpc.insecure_channel(server.target) as channel:
                kms, users = kms_pb2_grpc.KMSStub(channel), auth_pb2_grpc.AuthStub(channel)
                try:
                    value = uuid.uuid4().bytes
                    reply = kms.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=value), metadata=md, timeout=10)
                    with self.lock:
                        self.sealed.append((reply.ciphertext, value))
                        earlier, expected = random.choice(self.sealed)
                    request = kms_pb2.DecryptRequest(field="f", ciphertext=earlier)
                    assert kms.Decrypt(request, metadata=md, timeout=10).plaintext == expected
                    if turn % 4 == 0:
                        identifier = self.users[turn // 4 % len(self.users)][turn // 8 % 2]
                        users.Login(auth_pb2.LoginRequest(username=identifier, password=PASSWORD), timeout=10)
                        self.logins += 1
                except (grpc.RpcError, AssertionError) as exc:
                    code = exc.code() if isinstance(exc, grpc.RpcError) else "wrong plaintext"
                    self.errors.append(f"{server.target}: {code}")
            turn += 1


@pytest.fixture
def fleet(tmp_path: Path, server_env: dict[str, str], own_database: str) -> Iterator[Fleet]:
    env = {
        **server_env,
        "DATABASE_URL": own_database,
        "APP__AUTH__CAPTCHA_ENABLED": "false",
        "APP__AUTH__LOGIN_RATE_LIMIT": "1000000",
    }
    fleet = Fleet(tmp_path, env)
    try:
        fleet.replicas = [fleet.start(OLD) for _ in range(3)]
        fleet.in_rotation = list(fleet.replicas)
        yield fleet
    finally:
        fleet.stop.set()
        for server in fleet.replicas:
            server.terminate()


def test_rolling_root_key_rotation_under_load(fleet: Fleet) -> None:
    first = fleet.replicas[0]
    with grpc.insecure_channel(first.target) as channel:
        users = auth_pb2_grpc.AuthStub(channel)
        for _ in range(2):
            suffix = uuid.uuid4().hex[:8]
            email, phone = f"roll.{suffix}@example.com", f"+86137{random.randrange(10**8):08d}"
            users.Register(
                auth_pb2.RegisterRequest(username=f"roll_{suffix}", password=PASSWORD, email=email, phone=phone),
                timeout=10,
            )
            fleet.users.append((email, phone))
    fleet.token = credential({**first.env}, "kms.encrypt,kms.decrypt,kms.admin", "default,rolling.*")
    with grpc.insecure_channel(first.target) as channel:  # a few hundred versions, so rekey has work to do
        kms = kms_pb2_grpc.KMSStub(channel)
        kms.CreateKey(kms_pb2.CreateKeyRequest(name="rolling.many"), metadata=auth(fleet.token), timeout=10)
        for _ in range(VERSIONS):
            kms.RotateDataKey(
                kms_pb2.RotateDataKeyRequest(key_name="rolling.many"), metadata=auth(fleet.token), timeout=10
            )
    loader = threading.Thread(target=fleet.load, daemon=True)
    loader.start()
    try:
        time.sleep(1)
        for i in range(3):
            fleet.replace(i, TRANSITION)
        time.sleep(1)
        written_before_rekey = len(fleet.sealed)
        rekey = cli({**fleet.replicas[0].env}, "kms", "rekey")
        assert rekey.returncode == 0, rekey.stderr[-2000:]
        assert "remaining under the previous root key: 0" in rekey.stdout
        assert f"re-wrapped {VERSIONS + 3} versions" in rekey.stdout, rekey.stdout
        status = cli({**fleet.replicas[0].env}, "kms", "status")
        assert "versions under the previous root key: 0" in status.stdout
        for i in range(3):
            fleet.replace(i, NEW)
        time.sleep(1)
    finally:
        fleet.stop.set()
        loader.join(30)
    assert fleet.errors == []
    assert len(fleet.sealed) > written_before_rekey > 0 and fleet.logins >= 4

    # Everything written before, during and after opens on a replica with the new seed only.
    md = auth(fleet.token)
    with grpc.insecure_channel(fleet.replicas[1].target) as channel:
        kms = kms_pb2_grpc.KMSStub(channel)
        for ciphertext, value in fleet.sealed:
            request = kms_pb2.DecryptRequest(field="f", ciphertext=ciphertext)
            assert kms.Decrypt(request, metadata=md, timeout=10).plaintext == value
        users = auth_pb2_grpc.AuthStub(channel)
        for email, phone in fleet.users:
            for identifier in (email, phone):
                users.Login(auth_pb2.LoginRequest(username=identifier, password=PASSWORD), timeout=10)
    print(f"rolling rekey: {rekey.stdout.strip()}")

    # A replica with only the old seed now refuses to start, and says why.
    refused = start_server(fleet.tmp_path, {**fleet.env, **OLD})
    assert refused.proc.wait(60) != 0
    assert "fail to unwrap" in refused.logs()
