"""Field-level encryption KMS: root key, versioned data keys, crypto service, key storage.

Usable in-process without gRPC. The app container calls ``build_kms(...)``, awaits ``initialize()``
and hands ``manager.crypto`` (an ``internal.biz.pii.FieldCipher``) to the use cases.
"""

from internal.pkg.kms.crypto import CryptoService, Decrypted, DecryptItem, EncryptBatchResult, EncryptItem
from internal.pkg.kms.factory import build_kms
from internal.pkg.kms.manager import (
    KeyInfo,
    KeyPage,
    KMSManager,
    KmsStatus,
    MaintenanceProgress,
    MaintenanceReport,
    RootKeyMismatch,
)
from internal.pkg.kms.targets import ReencryptBatch, ReencryptionTarget

__all__ = [
    "CryptoService",
    "DecryptItem",
    "Decrypted",
    "EncryptBatchResult",
    "EncryptItem",
    "KMSManager",
    "KeyInfo",
    "KeyPage",
    "KmsStatus",
    "MaintenanceProgress",
    "MaintenanceReport",
    "ReencryptBatch",
    "ReencryptionTarget",
    "RootKeyMismatch",
    "build_kms",
]
