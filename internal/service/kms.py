"""kms.v1.KMS: field encryption and key administration for other services.

Every call carries a service credential (``authorization: Bearer akms_…``) with the scope the RPC needs.
Replies carry key metadata only, never key material.
"""

from __future__ import annotations

from datetime import datetime

import grpc

from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from internal.biz.credentials import CredentialUsecase
from internal.biz.errors import DomainError, InvalidArgument, Unauthenticated
from internal.pkg.kms import KeyInfo, KMSManager
from internal.pkg.kms.envelope import sealed_algorithm
from internal.service.metadata import bearer_token
from internal.service.status import domain_status_proto
from internal.service.wire import EncodedReply, encode_encrypt_batch

ENCRYPT, DECRYPT, ADMIN = "kms.encrypt", "kms.decrypt", "kms.admin"


def _unix(moment: datetime | None) -> int:
    return int(moment.timestamp()) if moment else 0


def key_info(key: KeyInfo) -> kms_pb2.DataKeyInfo:
    return kms_pb2.DataKeyInfo(
        id=key.id,
        version=key.version,
        algorithm=key.algorithm,
        status=key.status,
        created_at=_unix(key.created_at),
        updated_at=_unix(key.updated_at),
        expires_at=_unix(key.expires_at),
        encryption_count=key.encryption_count,
    )


class KMSService(kms_pb2_grpc.KMSServicer):
    def __init__(self, manager: KMSManager, credentials: CredentialUsecase, require_credentials: bool = True) -> None:
        self._kms = manager
        self._crypto = manager.crypto
        self._credentials = credentials
        self._require_credentials = require_credentials

    async def _authorize(self, context: grpc.aio.ServicerContext, action: str, *scopes: str) -> None:
        if not self._require_credentials:
            return
        try:
            token: str | None = bearer_token(context)
        except Unauthenticated:
            token = None
        await self._credentials.authorize(token, *scopes, action=action)

    async def Encrypt(self, request: kms_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> kms_pb2.EncryptReply:
        """Encrypt one field value under the active key, bound to its field name and context."""
        await self._authorize(context, "Encrypt", ENCRYPT)
        sealed = await self._crypto.encrypt(request.field, request.plaintext, request.context)
        return kms_pb2.EncryptReply(
            ciphertext=sealed.ciphertext,
            key_version=sealed.key_version,
            algorithm=sealed_algorithm(sealed.ciphertext),
        )

    async def Decrypt(self, request: kms_pb2.DecryptRequest, context: grpc.aio.ServicerContext) -> kms_pb2.DecryptReply:
        """Decrypt with the key named inside the ciphertext; wrong field/context or tampering is CIPHERTEXT_INVALID."""
        await self._authorize(context, "Decrypt", DECRYPT)
        opened = await self._crypto.decrypt_with_version(request.field, request.ciphertext, request.context)
        return kms_pb2.DecryptReply(plaintext=opened.plaintext, key_version=opened.key_version)

    async def EncryptBatch(
        self, request: kms_pb2.EncryptBatchRequest, context: grpc.aio.ServicerContext
    ) -> EncodedReply:
        """Encrypt many values under one active key; each item succeeds or fails on its own (status unset: OK)."""
        await self._authorize(context, "EncryptBatch", ENCRYPT)
        batch = await self._crypto.encrypt_batch(request.items)
        return encode_encrypt_batch(batch.results, batch.key_version, batch.algorithm)

    async def DecryptBatch(
        self, request: kms_pb2.DecryptBatchRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.DecryptBatchReply:
        """Decrypt many values; each item succeeds or fails on its own."""
        await self._authorize(context, "DecryptBatch", DECRYPT)
        opened = await self._crypto.decrypt_batch(request.items)
        reply = kms_pb2.DecryptBatchReply()
        add = reply.results.add
        for result in opened:
            if isinstance(result, DomainError):
                add(status=domain_status_proto(result))
            else:
                add(plaintext=result.plaintext, key_version=result.key_version)  # status unset: code 0, OK
        return reply

    async def HashField(
        self, request: kms_pb2.HashFieldRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.HashFieldReply:
        """The keyed blind index of a normalized value: exactly what the users table stores for lookups."""
        await self._authorize(context, "HashField", ENCRYPT, DECRYPT)
        return kms_pb2.HashFieldReply(hash=self._crypto.blind_index(request.field, request.value))

    async def Rewrap(self, request: kms_pb2.RewrapRequest, context: grpc.aio.ServicerContext) -> kms_pb2.RewrapReply:
        """Re-encrypt under the active key; the plaintext never leaves the server."""
        await self._authorize(context, "Rewrap", ENCRYPT)
        sealed = await self._crypto.rewrap(request.field, request.ciphertext, dict(request.context))
        return kms_pb2.RewrapReply(ciphertext=sealed.ciphertext, key_version=sealed.key_version)

    async def RotateDataKey(
        self, request: kms_pb2.RotateDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.RotateDataKeyReply:
        """Make a new active key; the previous one becomes decrypt-only."""
        await self._authorize(context, "RotateDataKey", ADMIN)
        if len(request.reason) > 200:
            raise InvalidArgument("VALIDATION_ERROR", "reason must be at most 200 characters")
        return kms_pb2.RotateDataKeyReply(key=key_info(await self._kms.rotate(request.reason)))

    async def GetActiveDataKey(
        self, request: kms_pb2.GetActiveDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.GetActiveDataKeyReply:
        await self._authorize(context, "GetActiveDataKey", ADMIN, ENCRYPT)
        return kms_pb2.GetActiveDataKeyReply(key=key_info(await self._kms.active_key()))

    async def GetDataKey(
        self, request: kms_pb2.GetDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.GetDataKeyReply:
        await self._authorize(context, "GetDataKey", ADMIN)
        if request.version <= 0:
            raise InvalidArgument("VALIDATION_ERROR", "version must be a positive integer")
        return kms_pb2.GetDataKeyReply(key=key_info(await self._kms.key_by_version(request.version)))

    async def ListDataKeys(
        self, request: kms_pb2.ListDataKeysRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.ListDataKeysReply:
        await self._authorize(context, "ListDataKeys", ADMIN)
        page = await self._kms.list_keys(request.page_size, request.page_token, request.status)
        return kms_pb2.ListDataKeysReply(keys=[key_info(k) for k in page.keys], next_page_token=page.next_page_token)

    async def GetStatus(
        self, request: kms_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.GetStatusReply:
        await self._authorize(context, "GetStatus", ADMIN, ENCRYPT, DECRYPT)
        status = await self._kms.status()
        return kms_pb2.GetStatusReply(
            initialized=status.initialized,
            algorithm=status.algorithm,
            rotate_interval_seconds=status.rotate_interval_seconds,
            active_version=status.active_version,
            active_expires_at=_unix(status.active_expires_at),
            active_created_at=_unix(status.active_created_at),
            active_encryption_count=status.active_encryption_count,
            counts=status.counts,
            storage_type=status.storage_type,
        )

    async def PerformMaintenance(
        self, request: kms_pb2.PerformMaintenanceRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.PerformMaintenanceReply:
        """Mark expired keys, re-encrypt stored PII under retired keys, destroy keys nothing needs."""
        await self._authorize(context, "PerformMaintenance", ADMIN)
        if request.batch_size < 0 or request.batch_size > 10_000:
            raise InvalidArgument("VALIDATION_ERROR", "batch_size must be between 0 (default) and 10000")
        report = await self._kms.maintenance(batch_size=request.batch_size, dry_run=request.dry_run)
        return kms_pb2.PerformMaintenanceReply(
            expired_marked=report.expired_marked,
            records_reencrypted=report.records_reencrypted,
            keys_destroyed=report.keys_destroyed,
            remaining=report.remaining,
            done=report.done,
        )
