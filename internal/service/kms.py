"""kms.v1.KMS: field encryption under named keys, and key administration for other services.

Every call carries a service credential (``authorization: Bearer akms_…``) with the scope the RPC needs and a
key pattern matching the key it names (``key_name``, empty: ``default``). Reserved ``authkms.`` keys answer
PERMISSION_DENIED to every caller. Replies carry key metadata only, never key material.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import grpc

from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from internal.biz.credentials import CredentialUsecase, ServiceCredential
from internal.biz.errors import DomainError, InvalidArgument, Unauthenticated
from internal.biz.kms import is_reserved, key_denied, key_name_or_default
from internal.biz.kms_admin import KeyAdmin, KeyInfo, NamedKeyInfo
from internal.biz.kms_cipher import KmsCipher
from internal.biz.kms_datakey import DATA_KEY_FIELD, DataKeyUsecase, refuse_reserved_field, reserved_field
from internal.pkg.kms.envelope import sealed_algorithm
from internal.service.metadata import bearer_token
from internal.service.status import domain_status_proto
from internal.service.wire import EncodedReply, encode_encrypt_batch

ENCRYPT, DECRYPT, DATAKEY, ADMIN = "kms.encrypt", "kms.decrypt", "kms.datakey", "kms.admin"


class HasField(Protocol):
    @property
    def field(self) -> str: ...


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
        key_name=key.key_name,
        destroy_after=_unix(key.destroy_after),
    )


def named_key_info(key: NamedKeyInfo) -> kms_pb2.NamedKeyInfo:
    return kms_pb2.NamedKeyInfo(
        name=key.name,
        algorithm=key.policy.algorithm,
        rotate_interval_seconds=int(key.policy.rotate_interval.total_seconds()),
        rotate_after_encryptions=key.policy.rotate_after_encryptions,
        destruction_wait_seconds=int(key.policy.destruction_wait.total_seconds()),
        description=key.description,
        reserved=key.reserved,
        active_version=key.active_version,
        created_at=_unix(key.created_at),
        updated_at=_unix(key.updated_at),
    )


def _refuse_reserved_items(items: Sequence[HasField], results: list[Any]) -> None:
    """A batch item naming the data keys' reserved field fails alone, whatever the cipher made of it."""
    for index, item in enumerate(items):
        if item.field == DATA_KEY_FIELD:
            results[index] = reserved_field()


# Fields no batch item may name, with the error such an item gets.
_REFUSED_FIELDS = {DATA_KEY_FIELD: reserved_field()}


class KMSService(kms_pb2_grpc.KMSServicer):
    def __init__(
        self,
        cipher: KmsCipher,
        admin: KeyAdmin,
        credentials: CredentialUsecase,
        require_credentials: bool = True,
        *,
        data_keys: DataKeyUsecase,
    ) -> None:
        self._cipher = cipher
        self._data_keys = data_keys
        self._admin = admin
        self._credentials = credentials
        self._require_credentials = require_credentials

    async def _credential(
        self, context: grpc.aio.ServicerContext, action: str, key_name: str | None, *scopes: str
    ) -> ServiceCredential | None:
        """The caller's credential, checked for one of ``scopes`` and (unless None) for ``key_name``; None when
        credentials are not required (reserved keys stay refused even then)."""
        if not self._require_credentials:
            if key_name is not None and is_reserved(key_name):
                raise key_denied(key_name)
            return None
        try:
            token: str | None = bearer_token(context)
        except Unauthenticated:
            token = None
        if key_name is None:
            return await self._credentials.authorize(token, *scopes, action=action)
        return await self._credentials.authorize_key(token, key_name, *scopes, action=action)

    async def _authorize(self, context: grpc.aio.ServicerContext, action: str, request_key: str, *scopes: str) -> str:
        """Authorize the call on the key the request names; returns that key's name."""
        key_name = key_name_or_default(request_key)
        await self._credential(context, action, key_name, *scopes)
        return key_name

    async def Encrypt(self, request: kms_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> kms_pb2.EncryptReply:
        """Encrypt one field value under the key's active version, bound to the key, field name and context."""
        key_name = await self._authorize(context, "Encrypt", request.key_name, ENCRYPT)
        refuse_reserved_field(request.field)
        sealed = await self._cipher.encrypt(key_name, request.field, request.plaintext, request.context)
        return kms_pb2.EncryptReply(
            ciphertext=sealed.ciphertext,
            key_version=sealed.key_version,
            algorithm=sealed_algorithm(sealed.ciphertext),
        )

    async def Decrypt(self, request: kms_pb2.DecryptRequest, context: grpc.aio.ServicerContext) -> kms_pb2.DecryptReply:
        """Decrypt with the version named inside the ciphertext; another key's ciphertext, a wrong field/context
        or tampering is CIPHERTEXT_INVALID."""
        key_name = await self._authorize(context, "Decrypt", request.key_name, DECRYPT)
        refuse_reserved_field(request.field)
        opened = await self._cipher.decrypt(key_name, request.field, request.ciphertext, request.context)
        return kms_pb2.DecryptReply(plaintext=opened.plaintext, key_version=opened.key_version)

    async def EncryptBatch(
        self, request: kms_pb2.EncryptBatchRequest, context: grpc.aio.ServicerContext
    ) -> EncodedReply:
        """Encrypt many values under one active version; each item succeeds or fails on its own (status unset: OK)."""
        key_name = await self._authorize(context, "EncryptBatch", request.key_name, ENCRYPT)
        batch = await self._cipher.encrypt_batch(key_name, request.items, _REFUSED_FIELDS)
        return encode_encrypt_batch(batch.results, batch.key_version, batch.algorithm)

    async def DecryptBatch(
        self, request: kms_pb2.DecryptBatchRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.DecryptBatchReply:
        """Decrypt many values; each item succeeds or fails on its own."""
        key_name = await self._authorize(context, "DecryptBatch", request.key_name, DECRYPT)
        opened = await self._cipher.decrypt_batch(key_name, request.items)
        _refuse_reserved_items(request.items, opened)
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
        """The keyed blind index of a normalized value under the key's own blind-index key."""
        key_name = await self._authorize(context, "HashField", request.key_name, ENCRYPT, DECRYPT)
        return kms_pb2.HashFieldReply(hash=self._cipher.blind_index(key_name, request.field, request.value))

    async def Rewrap(self, request: kms_pb2.RewrapRequest, context: grpc.aio.ServicerContext) -> kms_pb2.RewrapReply:
        """Re-encrypt under the key's active version; the plaintext never leaves the server."""
        key_name = await self._authorize(context, "Rewrap", request.key_name, ENCRYPT)
        refuse_reserved_field(request.field)
        sealed = await self._cipher.rewrap(key_name, request.field, request.ciphertext, dict(request.context))
        return kms_pb2.RewrapReply(ciphertext=sealed.ciphertext, key_version=sealed.key_version)

    async def RotateDataKey(
        self, request: kms_pb2.RotateDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.RotateDataKeyReply:
        """Make a new active version of the key; the previous one becomes decrypt-only."""
        key_name = await self._authorize(context, "RotateDataKey", request.key_name, ADMIN)
        return kms_pb2.RotateDataKeyReply(key=key_info(await self._admin.rotate(key_name, request.reason)))

    async def GetActiveDataKey(
        self, request: kms_pb2.GetActiveDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.GetActiveDataKeyReply:
        key_name = await self._authorize(context, "GetActiveDataKey", request.key_name, ADMIN, ENCRYPT)
        return kms_pb2.GetActiveDataKeyReply(key=key_info(await self._admin.active_version(key_name)))

    async def GetDataKey(
        self, request: kms_pb2.GetDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.GetDataKeyReply:
        key_name = await self._authorize(context, "GetDataKey", request.key_name, ADMIN)
        return kms_pb2.GetDataKeyReply(key=key_info(await self._admin.version(key_name, request.version)))

    async def ListDataKeys(
        self, request: kms_pb2.ListDataKeysRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.ListDataKeysReply:
        key_name = await self._authorize(context, "ListDataKeys", request.key_name, ADMIN)
        page = await self._admin.list_versions(key_name, request.page_size, request.page_token, request.status)
        return kms_pb2.ListDataKeysReply(keys=[key_info(k) for k in page.items], next_page_token=page.next_page_token)

    async def GetStatus(
        self, request: kms_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.GetStatusReply:
        key_name = await self._authorize(context, "GetStatus", request.key_name, ADMIN, ENCRYPT, DECRYPT)
        status = await self._admin.status(key_name)
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
            key_name=status.key_name,
            versions_under_previous_root=status.versions_under_previous_root,
            root_key_fingerprint=status.root_key_fingerprint,
        )

    async def PerformMaintenance(
        self, request: kms_pb2.PerformMaintenanceRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.PerformMaintenanceReply:
        """Rotate the key if due, mark expired versions, destroy versions whose scheduled destruction is due."""
        key_name = await self._authorize(context, "PerformMaintenance", request.key_name, ADMIN)
        if request.batch_size < 0 or request.batch_size > 10_000:
            raise InvalidArgument("VALIDATION_ERROR", "batch_size must be between 0 (default) and 10000")
        report = await self._admin.maintenance([key_name], batch_size=request.batch_size, dry_run=request.dry_run)
        return kms_pb2.PerformMaintenanceReply(
            expired_marked=report.expired_marked,
            records_reencrypted=report.records_reencrypted,
            keys_destroyed=report.keys_destroyed,
            remaining=report.remaining,
            done=report.done,
        )

    async def CreateKey(
        self, request: kms_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.CreateKeyReply:
        """Create a named key (within the credential's key patterns) with its first active version."""
        if not request.name:
            raise InvalidArgument("VALIDATION_ERROR", "name is required", {"field": "name"})
        key_name = await self._authorize(context, "CreateKey", request.name, ADMIN)
        key = await self._admin.create_key(
            key_name,
            algorithm=request.algorithm,
            rotate_interval_seconds=request.rotate_interval_seconds,
            rotate_after_encryptions=request.rotate_after_encryptions,
            destruction_wait_seconds=request.destruction_wait_seconds,
            description=request.description,
        )
        return kms_pb2.CreateKeyReply(key=named_key_info(key))

    async def GetKey(self, request: kms_pb2.GetKeyRequest, context: grpc.aio.ServicerContext) -> kms_pb2.GetKeyReply:
        key_name = await self._authorize(context, "GetKey", request.name, ADMIN)
        return kms_pb2.GetKeyReply(key=named_key_info(await self._admin.get_key(key_name)))

    async def ListKeys(
        self, request: kms_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.ListKeysReply:
        """The named keys this credential may use, by name."""
        credential = await self._credential(context, "ListKeys", None, ADMIN)
        visible: Callable[[str], bool] = (
            credential.may_use_key if credential is not None else (lambda name: not is_reserved(name))
        )
        page = await self._admin.list_keys(request.page_size, request.page_token, visible)
        return kms_pb2.ListKeysReply(keys=[named_key_info(k) for k in page.items], next_page_token=page.next_page_token)

    async def UpdateKey(
        self, request: kms_pb2.UpdateKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.UpdateKeyReply:
        key_name = await self._authorize(context, "UpdateKey", request.name, ADMIN)
        key = await self._admin.update_key(
            key_name,
            rotate_interval_seconds=request.rotate_interval_seconds,
            rotate_after_encryptions=request.rotate_after_encryptions,
            destruction_wait_seconds=request.destruction_wait_seconds,
            description=request.description,
        )
        return kms_pb2.UpdateKeyReply(key=named_key_info(key))

    async def ScheduleKeyDestruction(
        self, request: kms_pb2.ScheduleKeyDestructionRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.ScheduleKeyDestructionReply:
        """Schedule the destruction of a retired version after its waiting period."""
        key_name = await self._authorize(context, "ScheduleKeyDestruction", request.key_name, ADMIN)
        key = await self._admin.schedule_destruction(key_name, request.version, request.waiting_period_seconds)
        return kms_pb2.ScheduleKeyDestructionReply(key=key_info(key))

    async def CancelKeyDestruction(
        self, request: kms_pb2.CancelKeyDestructionRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.CancelKeyDestructionReply:
        """Cancel a pending destruction; the version decrypts again."""
        key_name = await self._authorize(context, "CancelKeyDestruction", request.key_name, ADMIN)
        return kms_pb2.CancelKeyDestructionReply(
            key=key_info(await self._admin.cancel_destruction(key_name, request.version))
        )

    async def Rekey(self, request: kms_pb2.RekeyRequest, context: grpc.aio.ServicerContext) -> kms_pb2.RekeyReply:
        """Re-wrap data keys still under the previous root key under the current one; resumable."""
        await self._credential(context, "Rekey", None, ADMIN)
        report = await self._admin.rekey(request.batch_size)
        return kms_pb2.RekeyReply(rewrapped=report.rewrapped, remaining=report.remaining, done=report.remaining == 0)

    async def GenerateDataKey(
        self, request: kms_pb2.GenerateDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.GenerateDataKeyReply:
        """A fresh data key for the caller to encrypt with locally, and its copy wrapped under the named key."""
        key_name = key_name_or_default(request.key_name)
        credential = await self._credential(context, "GenerateDataKey", key_name, DATAKEY)
        key = await self._data_keys.generate(key_name, request.context, caller=_caller(credential))
        return kms_pb2.GenerateDataKeyReply(
            plaintext=key.plaintext,
            wrapped_key=key.wrapped_key,
            key_version=key.key_version,
            key_name=key.key_name,
            algorithm=key.algorithm,
        )

    async def DecryptDataKey(
        self, request: kms_pb2.DecryptDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.DecryptDataKeyReply:
        """The data key inside a wrapped key from GenerateDataKey, under the same key and context."""
        key_name = key_name_or_default(request.key_name)
        credential = await self._credential(context, "DecryptDataKey", key_name, DATAKEY)
        key = await self._data_keys.decrypt(key_name, request.wrapped_key, request.context, caller=_caller(credential))
        return kms_pb2.DecryptDataKeyReply(plaintext=key.plaintext, key_version=key.key_version)


def _caller(credential: ServiceCredential | None) -> str:
    """Who the audit names: the credential, or "anonymous" where credentials are not required."""
    return credential.name if credential is not None else "anonymous"
