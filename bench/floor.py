"""`python -m bench.floor PORT`: Encrypt and EncryptBatch servicers doing nothing but the AEAD calls, as a
yardstick; for the key name ``TRANSPORT_ONLY`` EncryptBatch does not even those (a reply of the same size,
written once), to show what grpcio's transport and parsing alone cost per field.

Per value it makes one AES-256-GCM call with a fresh nonce; EncryptBatch's reply is written by the service's
own ``encode_encrypt_batch``. It does none of the service's other work: no authentication, no validation of
field, context or size, no envelope header, no per-item errors, no metrics, no access log. Loaded exactly
like the real server, it shows how far a pure-Python servicer on one core gets with grpcio and
``cryptography`` before doing anything a KMS must do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from grpc_health.v1 import health, health_pb2_grpc

from api.gen.kms.v1 import kms_pb2
from internal.service.wire import EncodedReply, encode_encrypt_batch

NONCE_SIZE = 12
KEY_VERSION = 1
TRANSPORT_ONLY = "bench.transport-only"


class FloorKMS:
    def __init__(self) -> None:
        self._encrypt = AESGCM(AESGCM.generate_key(bit_length=256)).encrypt
        self._ad = b"users.email\x00table=users\x00tenant=bench"  # one fixed binding: nothing to check
        self._canned: dict[int, EncodedReply] = {}  # TRANSPORT_ONLY's replies, by item count

    def seal(self, items: Sequence[kms_pb2.EncryptItem]) -> list[bytes]:
        """The bare batch loop: one AEAD call per item's plaintext, a fresh nonce, the one fixed binding."""
        encrypt, ad = self._encrypt, self._ad
        random = os.urandom(NONCE_SIZE * len(items))
        sealed: list[bytes] = []
        for i, item in enumerate(items):
            nonce = random[i * NONCE_SIZE : (i + 1) * NONCE_SIZE]
            sealed.append(nonce + encrypt(nonce, item.plaintext, ad))
        return sealed

    async def encrypt_batch(
        self, request: kms_pb2.EncryptBatchRequest, context: grpc.aio.ServicerContext
    ) -> EncodedReply:
        if request.key_name == TRANSPORT_ONLY:
            return self._transport_only(request)
        return encode_encrypt_batch(self.seal(request.items), KEY_VERSION, "AES_256_GCM")

    async def encrypt(self, request: kms_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> kms_pb2.EncryptReply:
        nonce = os.urandom(NONCE_SIZE)
        sealed = nonce + self._encrypt(nonce, request.plaintext, self._ad)
        return kms_pb2.EncryptReply(ciphertext=sealed, key_version=KEY_VERSION, algorithm="AES_256_GCM")

    def _transport_only(self, request: kms_pb2.EncryptBatchRequest) -> EncodedReply:
        count = len(request.items)
        if count not in self._canned:  # as large as the sealed reply
            sealed = [os.urandom(NONCE_SIZE + len(request.items[0].plaintext) + 16)] * count if count else []
            self._canned[count] = encode_encrypt_batch(sealed, KEY_VERSION, "AES_256_GCM")
        return self._canned[count]


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])
    kms = FloorKMS()
    method = grpc.unary_unary_rpc_method_handler(
        kms.encrypt_batch,
        request_deserializer=kms_pb2.EncryptBatchRequest.FromString,
        response_serializer=lambda reply: reply.wire,  # as the service's EncryptBatch is sent
    )
    encrypt = grpc.unary_unary_rpc_method_handler(
        kms.encrypt,
        request_deserializer=kms_pb2.EncryptRequest.FromString,
        response_serializer=kms_pb2.EncryptReply.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("kms.v1.KMS", {"EncryptBatch": method, "Encrypt": encrypt}),)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
