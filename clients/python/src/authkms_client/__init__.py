"""Python client for the authkms kms.v1 service.

``KmsClient``: typed asyncio calls with the credential in metadata, deadlines and retries on UNAVAILABLE.
``EnvelopeEncryptor``: local encryption under cached data keys (``seal``/``open``), one RPC per data key.
"""

from authkms_client.client import DataKey, Encrypted, FieldValue, KmsClient, RetryPolicy
from authkms_client.envelope import CacheLimits, EnvelopeEncryptor
from authkms_client.errors import CiphertextInvalidError, KmsError

__all__ = [
    "CacheLimits",
    "CiphertextInvalidError",
    "DataKey",
    "Encrypted",
    "EnvelopeEncryptor",
    "FieldValue",
    "KmsClient",
    "KmsError",
    "RetryPolicy",
]
