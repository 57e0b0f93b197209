"""The client library's envelope format without a server (a fake KmsClient): the layout, what the associated data
binds, fresh nonces, concurrent opens sharing one unwrap, and a forked child never sealing with its parent's key."""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
from typing import Any

import pytest
from authkms_client import CacheLimits, CiphertextInvalidError, EnvelopeEncryptor
from authkms_client.client import DataKey
from authkms_client.envelope import FORMAT_VERSION, MAGIC, NONCE_SIZE, PREFETCH_LEAD, TAG_SIZE, parse


class FakeKms:
    """Generates keys like the server (wrapped copy = an opaque token here) and unwraps the ones it made."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}
        self.unwraps = 0

    async def generate_data_key(self, *, key_name: str, context: Any) -> DataKey:
        material, wrapped = os.urandom(32), os.urandom(67)
        self.keys[wrapped] = material
        return DataKey(material, wrapped, key_name, 1, "AES-256-GCM")

    async def decrypt_data_key(self, wrapped: bytes, *, key_name: str, context: Any) -> bytes:
        self.unwraps += 1
        await asyncio.sleep(0.01)  # let concurrent opens pile up
        return self.keys[wrapped]


def encryptor(kms: FakeKms, **options: Any) -> EnvelopeEncryptor:
    return EnvelopeEncryptor(kms, key_name="orders", **options)  # type: ignore[arg-type]


async def test_layout_is_self_describing() -> None:
    kms = FakeKms()
    sealed = await encryptor(kms).seal("email", b"a" * 32, {"row": "1"})
    (wrapped,) = kms.keys
    assert sealed[:3] == bytes((MAGIC, FORMAT_VERSION, len("orders")))
    assert sealed[3:9] == b"orders"
    assert struct.unpack(">H", sealed[9:11]) == (len(wrapped),) and sealed[11 : 11 + len(wrapped)] == wrapped
    assert len(sealed) == 11 + len(wrapped) + NONCE_SIZE + 32 + TAG_SIZE
    assert parse(sealed) == (sealed[: 11 + len(wrapped)], "orders")


async def test_associated_data_binds_field_context_key_name_and_wrapped_key() -> None:
    kms = FakeKms()
    enc = encryptor(kms)
    sealed = await enc.seal("email", b"secret", {"row": "1", "tenant": "t"})
    assert await enc.open("email", sealed, {"tenant": "t", "row": "1"}) == b"secret"  # order does not matter
    for field, context in (("phone", {"row": "1", "tenant": "t"}), ("email", {"row": "1"}), ("email", None)):
        with pytest.raises(CiphertextInvalidError):
            await enc.open(field, sealed, context)
    # Another of the encryptor's wrapped keys put in the header (same length) no longer opens the value.
    other = await encryptor(kms, limits=CacheLimits(max_messages=1)).seal("email", b"x")
    swapped = parse(other)[0] + sealed[len(parse(sealed)[0]) :]
    with pytest.raises(CiphertextInvalidError):
        await enc.open("email", swapped, {"row": "1", "tenant": "t"})
    with pytest.raises(CiphertextInvalidError):
        await enc.open("email", b"\xae\x01\x00\x00", None)


async def test_nonces_are_fresh_and_context_changes_rebind() -> None:
    enc = encryptor(FakeKms())
    sealed = [await enc.seal("f", b"same", {"row": str(i % 3)}) for i in range(3000)]
    header = len(parse(sealed[0])[0])
    assert len({s[header : header + NONCE_SIZE] for s in sealed}) == 3000
    for i, value in enumerate(sealed):
        assert await enc.open("f", value, {"row": str(i % 3)}) == b"same"


async def test_concurrent_opens_of_one_data_key_unwrap_it_once() -> None:
    kms = FakeKms()
    values = [await encryptor(kms).seal("f", str(i).encode()) for i in range(5)]
    values += [await encryptor(kms).seal("f", b"other key")]
    reader = encryptor(kms)
    opened = await asyncio.gather(*(reader.open("f", v) for v in values * 20))
    assert opened == [v for v in [str(i).encode() for i in range(5)] + [b"other key"]] * 20
    assert kms.unwraps == 6 and reader.data_keys_unwrapped == 6


def test_a_forked_child_forgets_the_data_key_and_nonces() -> None:
    kms = FakeKms()
    enc = encryptor(kms)
    asyncio.run(enc.seal("f", b"v"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it still holds the parent's key and nonces, then leave at once
        os.write(write, b"kept" if enc._sealing is not None else b"gone")  # its nonce pool goes with it
        os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"gone"
    assert enc._sealing is not None  # the parent keeps both


async def test_the_next_data_key_is_fetched_in_the_background_before_the_limit() -> None:
    kms = FakeKms()
    enc = encryptor(kms, limits=CacheLimits(max_messages=4096), prefetch=True)
    for _ in range(2048):
        await enc.seal("f", b"v")
    assert enc._next is None and len(kms.keys) == 1  # checked at nonce-pool refills: 1,024 used so far
    await enc.seal("f", b"v")  # the 2,049th value refills the nonce pool: half the messages are used
    assert enc._next is not None
    await asyncio.sleep(0.01)
    assert len(kms.keys) == 2 and enc.data_keys_generated == 2
    first = parse(await enc.seal("f", b"v"))[0]
    for _ in range(4096 - 2050):
        await enc.seal("f", b"v")
    switched = await enc.seal("f", b"v")  # value 4,097: the prefetched key, no new request
    assert parse(switched)[0] != first and len(kms.keys) == 2
    without = encryptor(FakeKms(), limits=CacheLimits(max_messages=4096), prefetch=False)  # no look-ahead
    for _ in range(4000):
        await without.seal("f", b"v")
    assert without._next is None and without.data_keys_generated == 1


async def test_the_next_key_is_asked_for_shortly_before_the_age_limit_not_at_half_of_it() -> None:
    """Asked at half the age, the key asked ahead would be half-aged when it takes over; it is asked
    PREFETCH_LEAD seconds before the current key's age limit instead (checked at nonce-pool refills)."""
    now = [0.0]
    kms = FakeKms()
    enc = encryptor(kms, limits=CacheLimits(max_age=300), clock=lambda: now[0])
    for _ in range(1024):  # the first pool
        await enc.seal("f", b"v")
    now[0] = 300 - PREFETCH_LEAD - 1
    await enc.seal("f", b"v")  # a refill, past half the age: not yet
    assert enc._next is None
    for _ in range(1023):
        await enc.seal("f", b"v")
    now[0] = 300 - PREFETCH_LEAD + 1
    await enc.seal("f", b"v")  # the next refill, within the lead: asked ahead
    assert enc._next is not None
    await asyncio.sleep(0.01)
    assert enc.data_keys_generated == 2


async def test_a_data_key_seals_exactly_its_message_limit() -> None:
    """The limit is kept by the size of the key's nonce pools: 1,500 values under one key, not one more."""
    kms = FakeKms()
    enc = encryptor(kms, limits=CacheLimits(max_messages=1500))
    headers = [parse(await enc.seal("f", b"v"))[0] for _ in range(3001)]
    assert [len(set(headers[i : i + 1500])) for i in (0, 1500)] == [1, 1]
    assert len(set(headers)) == 3 and len(kms.keys) == 3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_seal_sync_and_open_sync_work_while_the_key_is_cached_and_keep_its_age() -> None:
    kms, clock = FakeKms(), Clock()
    enc = encryptor(kms, limits=CacheLimits(max_age=60), clock=clock)
    assert enc.seal_sync("f", b"v") is None  # no data key yet: nothing sealed, no RPC
    assert len(kms.keys) == 0
    await enc.warm()
    sealed = enc.seal_sync("f", b"secret", {"row": "1"})
    assert sealed is not None and len(kms.keys) == 1
    assert await enc.open("f", sealed, {"row": "1"}) == b"secret"
    reader = encryptor(kms, limits=CacheLimits(max_age=60), clock=clock)
    assert reader.open_sync("f", sealed, {"row": "1"}) is None  # not unwrapped yet
    assert await reader.open("f", sealed, {"row": "1"}) == b"secret" and kms.unwraps == 1
    assert reader.open_sync("f", sealed, {"row": "1"}) == b"secret"
    assert reader.open_sync("f", enc.seal_sync("f", b"") or b"", None) == b""  # empty values open as b""
    with pytest.raises(CiphertextInvalidError):
        reader.open_sync("f", sealed, {"row": "2"})
    clock.now += 60  # max_age reached: neither seals nor opens without asking the server again
    assert enc.seal_sync("f", b"v") is None and reader.open_sync("f", sealed, {"row": "1"}) is None
    again = await enc.seal("f", b"v")
    assert len(kms.keys) == 2 and parse(again)[0] != parse(sealed)[0]
    assert enc.seal_sync("f", b"v") is not None


async def test_seal_sync_keeps_the_message_and_byte_limits() -> None:
    kms = FakeKms()
    enc = encryptor(kms, limits=CacheLimits(max_messages=1500))
    headers = [parse(enc.seal_sync("f", b"v") or await enc.seal("f", b"v"))[0] for _ in range(3001)]
    assert [len(set(headers[i : i + 1500])) for i in (0, 1500)] == [1, 1]
    assert len(set(headers)) == 3 and len(kms.keys) == 3
    by_bytes = encryptor(FakeKms(), limits=CacheLimits(max_bytes=100))
    await by_bytes.warm()
    assert [by_bytes.seal_sync("f", b"x" * 30) is not None for _ in range(4)] == [True, True, True, False]


def test_seal_sync_outside_an_event_loop_never_prefetches() -> None:
    enc = encryptor(FakeKms(), limits=CacheLimits(max_messages=2048), prefetch=True)
    asyncio.run(enc.warm())
    sealed = [enc.seal_sync("f", b"v") for _ in range(2048)]  # the second nonce pool is past half the limit
    assert all(s is not None for s in sealed) and enc._next is None
    assert enc.seal_sync("f", b"v") is None  # the limit is reached: ``seal`` must fetch the next key


async def test_seal_many_keeps_every_limit_and_opens_like_seal() -> None:
    kms, clock = FakeKms(), Clock()
    enc = encryptor(kms, limits=CacheLimits(max_age=60, max_messages=1500), clock=clock)
    values = [str(i).encode() for i in range(3001)]
    sealed = await enc.seal_many("f", values, {"row": "1"})
    headers = [parse(s)[0] for s in sealed]
    assert [len(set(headers[i : i + 1500])) for i in (0, 1500)] == [1, 1] and len(set(headers)) == 3
    assert [await enc.open("f", s, {"row": "1"}) for s in sealed[::500]] == values[::500]
    header = len(headers[0])
    assert len({s[header : header + NONCE_SIZE] for s in sealed}) == 3001
    by_bytes = encryptor(FakeKms(), limits=CacheLimits(max_bytes=100))
    assert len({parse(s)[0] for s in await by_bytes.seal_many("f", [b"x" * 30] * 7)}) == 3  # 3 + 3 + 1
    # A value larger than max_bytes alone gets a fresh key of its own, as with ``seal``.
    alone = await asyncio.wait_for(by_bytes.seal_many("f", [b"z" * 500, b"x" * 30]), 5)
    assert len({parse(s)[0] for s in alone}) == 2 and by_bytes.data_keys_generated == 5
    last = headers[-1]
    clock.now += 60  # max_age reached: the next values get a fresh key
    assert parse((await enc.seal_many("f", [b"v"]))[0])[0] != last and len(kms.keys) == 4


async def test_seal_many_checks_the_age_limit_at_every_pool_of_nonces() -> None:
    kms, clock = FakeKms(), Clock()
    enc = encryptor(kms, limits=CacheLimits(max_age=60), clock=clock, prefetch=False)
    await enc.warm()

    class Aging(list[bytes]):
        """Values whose every read takes 40 s: each key is past its age once it has sealed one pool."""

        def __getitem__(self, item: Any) -> Any:
            clock.now += 40
            return super().__getitem__(item)

    sealed = await enc.seal_many("f", Aging(str(i).encode() for i in range(3000)))
    per_key = [len(list(group)) for _, group in itertools.groupby(parse(s)[0] for s in sealed)]
    assert per_key == [1024, 1024, 952] and len(kms.keys) == 3
    assert [await enc.open("f", s) for s in sealed[1020:1030]] == [str(i).encode() for i in range(1020, 1030)]
