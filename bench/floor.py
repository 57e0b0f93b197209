"""`python -m bench.floor PORT`: the least work any EncryptBatch servicer can do in CPython, as a yardstick.

It parses the request, makes one AES-256-GCM call per item with a fresh nonce, and fills the reply. It
does no authentication, validation, envelope header, per-item errors, metrics or access log: those are
what the real service adds. Loaded exactly like the real server, its fields/s bound from above what any
pure-Python servicer on one core can reach with grpcio and ``cryptography``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from grpc_health.v1 import health, health_pb2_grpc

from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc

NONCE_SIZE = 12


class FloorKMS(kms_pb2_grpc.KMSServicer):
    def __init__(self) -> None:
        self._encrypt = AESGCM(AESGCM.generate_key(bit_length=256)).encrypt
        self._ad = b"users.email\x00table=users\x00tenant=bench"  # one fixed binding: nothing to check

    async def EncryptBatch(
        self, request: kms_pb2.EncryptBatchRequest, context: grpc.aio.ServicerContext
    ) -> kms_pb2.EncryptBatchReply:
        encrypt, ad = self._encrypt, self._ad
        reply = kms_pb2.EncryptBatchReply(algorithm="AES_256_GCM")
        add = reply.results.add
        random = os.urandom(NONCE_SIZE * len(request.items))
        for i, item in enumerate(request.items):
            nonce = random[i * NONCE_SIZE : (i + 1) * NONCE_SIZE]
            result = add()
            result.ciphertext = nonce + encrypt(nonce, item.plaintext, ad)
            result.key_version = 1
        return reply


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])
    kms_pb2_grpc.add_KMSServicer_to_server(FloorKMS(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
