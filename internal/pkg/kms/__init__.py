"""The pure parts of the KMS: the root key, data-key wrapping, the ciphertext envelope and its AEADs.

No I/O and no gRPC. Named keys, the key cache, rotation, maintenance and policy checks are use cases in
``internal.biz.kms*``; key storage and events are adapters in ``internal.data.kms*``.
"""
