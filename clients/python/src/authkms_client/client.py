"""Typed asyncio calls to kms.v1.KMS: the credential in metadata, one deadline per call, retries on UNAVAILABLE."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from authkms_client._gen.kms.v1 import kms_pb2, kms_pb2_grpc
from authkms_client.errors import KmsError, from_rpc_error, from_status

Context = Mapping[str, str]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on UNAVAILABLE (server restarting, connection lost) with exponential backoff and full jitter,
    within the call's deadline. Every kms.v1 data call is safe to repeat: a repeated Encrypt or GenerateDataKey
    only makes another valid ciphertext or key."""

    max_attempts: int = 5
    initial_backoff: float = 0.05  # seconds
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        """The pause before retry number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, ceiling)  # full jitter: replicas' clients do not retry in step


@dataclass(frozen=True)
class Encrypted:
    ciphertext: bytes
    key_version: int
    algorithm: str


@dataclass(frozen=True)
class DataKey:
    """A data key from GenerateDataKey: ``plaintext`` stays in memory, ``wrapped_key`` is stored with the data."""

    plaintext: bytes = dataclasses.field(repr=False)
    wrapped_key: bytes
    key_name: str
    key_version: int
    algorithm: str


@dataclass(frozen=True)
class FieldValue:
    """One item of a batch: a field name, the value, and its context (associated data)."""

    field: str
    value: bytes
    context: Context = dataclasses.field(default_factory=dict)


class KmsClient:
    """kms.v1 over one grpc.aio channel. ``credential`` is a service credential (``akms_…``).

    ``deadline`` (seconds; each method takes its own too) bounds a whole call, retries included. ``channel``
    lets a caller bring its own (TLS, interceptors); otherwise one is made to ``target``, secure when
    ``channel_credentials`` are given (use TLS across hosts)."""

    def __init__(
        self,
        target: str,
        credential: str,
        *,
        deadline: float = 5.0,
        retry: RetryPolicy | None = None,
        channel: grpc.aio.Channel | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if channel is None:
            channel = (
                grpc.aio.secure_channel(target, channel_credentials)
                if channel_credentials is not None
                else grpc.aio.insecure_channel(target)
            )
        self._channel = channel
        self._stub = kms_pb2_grpc.KMSStub(channel)
        self._metadata = (("authorization", f"Bearer {credential}"),)
        self.deadline = deadline
        self.retry = retry or RetryPolicy()
        self.calls = 0  # RPC attempts made, for callers' metrics (and the benchmark)

    def __repr__(self) -> str:
        return f"KmsClient(deadline={self.deadline}, <credential hidden>)"

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> KmsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any, deadline: float | None) -> Any:
        """One RPC with the credential, the deadline and the retry policy; KmsError on failure."""
        expires = time.monotonic() + (deadline if deadline is not None else self.deadline)
        attempt = 0
        while True:
            attempt += 1
            remaining = expires - time.monotonic()
            if remaining <= 0:
                raise KmsError(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "deadline exceeded")
            self.calls += 1
            try:
                return await method(request, metadata=self._metadata, timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            if error.code is not grpc.StatusCode.UNAVAILABLE or attempt >= self.retry.max_attempts:
                raise error
            pause = self.retry.backoff(attempt)
            if time.monotonic() + pause >= expires:
                raise error
            await asyncio.sleep(pause)

    async def encrypt(
        self,
        field: str,
        plaintext: bytes,
        context: Context | None = None,
        *,
        key_name: str = "",
        deadline: float | None = None,
    ) -> Encrypted:
        """One value encrypted by the server (an RPC per value: prefer ``EnvelopeEncryptor`` for bulk data)."""
        request = kms_pb2.EncryptRequest(field=field, plaintext=plaintext, context=context or {}, key_name=key_name)
        reply = await self._call(self._stub.Encrypt, request, deadline)
        return Encrypted(reply.ciphertext, reply.key_version, reply.algorithm)

    async def decrypt(
        self,
        field: str,
        ciphertext: bytes,
        context: Context | None = None,
        *,
        key_name: str = "",
        deadline: float | None = None,
    ) -> bytes:
        request = kms_pb2.DecryptRequest(field=field, ciphertext=ciphertext, context=context or {}, key_name=key_name)
        reply = await self._call(self._stub.Decrypt, request, deadline)
        return bytes(reply.plaintext)

    async def encrypt_batch(
        self, items: Sequence[FieldValue], *, key_name: str = "", deadline: float | None = None
    ) -> list[bytes | KmsError]:
        """One ciphertext or KmsError per item, in order."""
        request = kms_pb2.EncryptBatchRequest(
            items=[kms_pb2.EncryptItem(field=i.field, plaintext=i.value, context=i.context) for i in items],
            key_name=key_name,
        )
        reply = await self._call(self._stub.EncryptBatch, request, deadline)
        return [r.ciphertext if r.status.code == 0 else from_status(r.status) for r in reply.results]

    async def decrypt_batch(
        self, items: Sequence[FieldValue], *, key_name: str = "", deadline: float | None = None
    ) -> list[bytes | KmsError]:
        """``items`` carry ciphertexts as their values; one plaintext or KmsError per item, in order."""
        request = kms_pb2.DecryptBatchRequest(
            items=[kms_pb2.DecryptItem(field=i.field, ciphertext=i.value, context=i.context) for i in items],
            key_name=key_name,
        )
        reply = await self._call(self._stub.DecryptBatch, request, deadline)
        return [r.plaintext if r.status.code == 0 else from_status(r.status) for r in reply.results]

    async def hash_field(self, field: str, value: str, *, key_name: str = "", deadline: float | None = None) -> str:
        """The keyed blind index of ``value`` (for equality lookups on an encrypted column)."""
        request = kms_pb2.HashFieldRequest(field=field, value=value, key_name=key_name)
        return str((await self._call(self._stub.HashField, request, deadline)).hash)

    async def generate_data_key(
        self, *, key_name: str = "", context: Context | None = None, deadline: float | None = None
    ) -> DataKey:
        """A fresh data key and its copy wrapped under ``key_name``, bound to ``context``."""
        request = kms_pb2.GenerateDataKeyRequest(key_name=key_name, context=context or {})
        reply = await self._call(self._stub.GenerateDataKey, request, deadline)
        return DataKey(reply.plaintext, reply.wrapped_key, reply.key_name, reply.key_version, reply.algorithm)

    async def decrypt_data_key(
        self, wrapped_key: bytes, *, key_name: str = "", context: Context | None = None, deadline: float | None = None
    ) -> bytes:
        """The data key inside ``wrapped_key`` (the same key name and context as at generation)."""
        request = kms_pb2.DecryptDataKeyRequest(key_name=key_name, wrapped_key=wrapped_key, context=context or {})
        return bytes((await self._call(self._stub.DecryptDataKey, request, deadline)).plaintext)
