"""Local envelope encryption with cached data keys: one GenerateDataKey per data key, not one RPC per value.

``EnvelopeEncryptor.seal`` encrypts a value in this process with AES-256-GCM under a data key from
``GenerateDataKey``; the output carries the wrapped copy of that key, so ``open`` asks the server
(``DecryptDataKey``) at most once per data key and then opens locally too. ``seal_many`` seals many values with an
await only at a change of data key; ``seal_sync`` / ``open_sync`` work without an await while the data key is
cached, and answer None when it is not.

Sealed value layout (all integers big-endian)::

    offset  size  field
    0       1     magic 0xAE
    1       1     format version (1)
    2       1     key-name length k (1..63)
    3       k     key name (ASCII)
    3+k     2     wrapped-key length w
    5+k     w     wrapped data key (from GenerateDataKey: it names the key version that wrapped it)
    5+k+w   12    nonce (fresh random per value)
    17+k+w  n+16  ciphertext + 16-byte tag

The associated data authenticates everything before the nonce (so neither the key name nor the wrapped key can be
swapped), the field name and the sorted context, each length-prefixed as the server's envelope does, so a value
opens only under the field and context it was sealed with.

Cache limits follow the AWS Encryption SDK's caching materials manager: a data key stops sealing once it is older
than ``max_age``, has sealed ``max_messages`` values or ``max_bytes`` bytes, whichever comes first.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from authkms_client.client import KmsClient
from authkms_client.errors import CiphertextInvalidError, KmsError

MAGIC = 0xAE
FORMAT_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
DATA_KEY_SIZE = 32
MAX_FIELD_CHARS = 128
MAX_CACHED_FIELDS = 1024  # associated data cached per data key, by field name
NONCE_POOL_BYTES = NONCE_SIZE * 1024
# How long before a key's age limit the next one is asked for (``prefetch``): ample for one RPC.
PREFETCH_LEAD = 10.0
_AD_DOMAIN = b"authkms-client/envelope/v1"
_LENGTH = struct.Struct(">I")
_EMPTY: Mapping[str, str] = {}
Clock = Callable[[], float]


@dataclass(frozen=True)
class CacheLimits:
    """How long and how much one data key may seal, and how many unwrapped keys ``open`` keeps.

    ``max_messages`` defaults to 2**32, the NIST SP 800-38D bound for random 96-bit GCM nonces under one key."""

    max_age: float = 300.0  # seconds a data key is used (for sealing and, once unwrapped, for opening)
    max_messages: int = 2**32
    max_bytes: int = 2**62
    max_open_keys: int = 1000

    def __post_init__(self) -> None:
        if not (self.max_age > 0 and self.max_messages > 0 and self.max_bytes > 0 and self.max_open_keys > 0):
            raise ValueError("cache limits must be positive")
        if self.max_messages > 2**32:
            raise ValueError("max_messages above 2**32 risks nonce reuse under one AES-GCM key")


def _validate(field: str, context: Mapping[str, str]) -> None:
    if not isinstance(field, str) or not field or len(field) > MAX_FIELD_CHARS:
        raise ValueError(f"field must be 1..{MAX_FIELD_CHARS} characters")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise ValueError("context keys and values must be strings")


def associated_data(header: bytes, field: str, context: Mapping[str, str]) -> bytes:
    """Canonical encoding of (header, field, sorted context), each part length-prefixed."""
    _validate(field, context)
    pack = _LENGTH.pack
    name = field.encode("utf-8")
    parts = [_AD_DOMAIN, pack(len(header)), header, pack(len(name)), name, pack(len(context))]
    for key in sorted(context):
        encoded_key, encoded_value = key.encode("utf-8"), context[key].encode("utf-8")
        parts += (pack(len(encoded_key)), encoded_key, pack(len(encoded_value)), encoded_value)
    return b"".join(parts)


def header_for(key_name: str, wrapped_key: bytes) -> bytes:
    name = key_name.encode("ascii")
    return bytes((MAGIC, FORMAT_VERSION, len(name))) + name + struct.pack(">H", len(wrapped_key)) + wrapped_key


def parse(sealed: bytes) -> tuple[bytes, str]:
    """(header, key name) of a sealed value; CiphertextInvalidError if it is not one."""
    if not isinstance(sealed, bytes) or len(sealed) < 5 or sealed[0] != MAGIC or sealed[1] != FORMAT_VERSION:
        raise CiphertextInvalidError()
    name_end = 3 + sealed[2]
    header_end = name_end + 2 + int.from_bytes(sealed[name_end : name_end + 2], "big")
    if sealed[2] == 0 or len(sealed) < header_end + NONCE_SIZE + TAG_SIZE:
        raise CiphertextInvalidError()
    try:
        return sealed[:header_end], sealed[3:name_end].decode("ascii")
    except UnicodeDecodeError:
        raise CiphertextInvalidError() from None


class _Key:
    """An unwrapped data key with its header, the associated data it has built (by field) and, while it seals, its
    pool of fresh nonces."""

    __slots__ = ("aead", "bindings", "bytes", "encrypt", "expires", "header", "messages", "nonces")
    # messages: the nonces handed out to its pools (the values sealed, plus what is left in the pool)

    def __init__(self, material: bytes, header: bytes, expires: float) -> None:
        if len(material) != DATA_KEY_SIZE:
            raise CiphertextInvalidError("the server returned a data key of the wrong size")
        self.aead = AESGCM(material)
        self.encrypt = self.aead.encrypt
        self.nonces: list[bytes] = []
        self.header = header
        self.expires = expires
        self.messages = 0
        self.bytes = 0
        # field → (the context as given, copied; its associated data)
        self.bindings: dict[str, tuple[Mapping[str, str] | None, bytes]] = {}

    def ad(self, field: str, context: Mapping[str, str] | None) -> bytes:
        """The associated data for ``field`` and ``context`` (cached: callers repeat a few of each)."""
        cached = self.bindings.get(field)
        if cached is not None and cached[0] == context:
            return cached[1]
        ad = associated_data(self.header, field, context or _EMPTY)
        if len(self.bindings) >= MAX_CACHED_FIELDS:
            self.bindings.clear()  # callers choose field names: keep this bounded
        self.bindings[field] = (None if context is None else dict(context), ad)
        return ad


class EnvelopeEncryptor:
    """Seals and opens values locally under data keys of one named key (``key_name``, empty: ``default``).

    ``key_context`` is bound to every data key's wrapped copy (e.g. ``{"service": "orders"}``): every encryptor
    that opens the values needs the same one. The per-value ``context`` of ``seal``/``open`` binds a value to
    its row (e.g. ``{"row": "42"}``) and is checked locally. ``clock`` (monotonic seconds) can be injected.

    ``prefetch`` (on by default): while sealing, ask for the next data key in the background once the current
    one has used half of its messages or bytes, or is within ``PREFETCH_LEAD`` seconds (at most half its
    ``max_age``) of its age limit, so ``seal`` does not wait for GenerateDataKey at each change of key. Over the
    encryptor's life it costs at most one key more than the limits imply (the one asked ahead, if sealing
    stops); each key's age counts from its generation. ``prefetch=False`` asks only when a key is needed."""

    def __init__(
        self,
        client: KmsClient,
        *,
        key_name: str = "",
        key_context: Mapping[str, str] | None = None,
        limits: CacheLimits | None = None,
        clock: Clock = time.monotonic,
        prefetch: bool = True,
    ) -> None:
        self._client = client
        self._prefetch = prefetch
        self._next: asyncio.Task[_Key] | None = None
        self.key_name = key_name or "default"
        self._key_context = dict(key_context or {})
        self.limits = limits or CacheLimits()
        self._max_messages = self.limits.max_messages
        self._max_bytes = self.limits.max_bytes
        self._clock = clock
        self._sealing: _Key | None = None
        self._refresh = asyncio.Lock()
        self._opening: OrderedDict[bytes, _Key] = OrderedDict()  # by header: key name + wrapped key
        self._unwrapping: dict[bytes, asyncio.Future[_Key]] = {}
        self.data_keys_generated = 0
        self.data_keys_unwrapped = 0
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"EnvelopeEncryptor(key_name={self.key_name!r}, <keys hidden>)"

    def forget(self) -> None:
        """Drop every cached data key and its nonce pool (e.g. after a suspected compromise); the next calls
        fetch new keys."""
        self._sealing = None
        self._opening.clear()
        if self._next is not None:
            self._next.cancel()
            self._next = None

    def _usable(self, key: _Key | None, size: int, now: float) -> bool:
        """Whether ``key`` may seal a value of ``size`` bytes now (``messages`` counts the nonces it has handed out
        to its pools, so it may still seal while its pool lasts)."""
        limits = self.limits
        return (
            key is not None
            and now < key.expires
            and (bool(key.nonces) or key.messages < limits.max_messages)
            and key.bytes + size <= limits.max_bytes
        )

    async def seal(self, field: str, value: bytes, context: Mapping[str, str] | None = None) -> bytes:
        """``value`` (bytes-like) encrypted locally, bound to ``field`` and ``context``; an RPC only when the
        cached data key has reached a limit (or there is none yet)."""
        # Every caller's hot path, each step counts: the message limit is kept by the size of the key's nonce pool
        # (checked when it is refilled), the other limits and the cached associated data are inlined.
        size = len(value)
        key = self._sealing
        if key is None or not key.nonces or key.bytes + size > self._max_bytes or self._clock() >= key.expires:
            key = await self._ready_key(size)
        cached = key.bindings.get(field)
        ad = cached[1] if cached is not None and cached[0] == context else key.ad(field, context)
        key.bytes += size
        nonce = key.nonces.pop()
        return key.header + nonce + key.encrypt(nonce, value, ad)

    def seal_sync(self, field: str, value: bytes, context: Mapping[str, str] | None = None) -> bytes | None:
        """``seal`` without an await, for bulk work: the sealed value when the cached data key may seal it now,
        else None (no key yet, or it has reached a limit): then ``await seal(...)`` fetches one. Sealed values
        are never empty, so ``enc.seal_sync(f, v, c) or await enc.seal(f, v, c)`` seals every value, awaiting
        only at a change of key. The cache limits hold exactly as for ``seal``."""
        size = len(value)
        key = self._sealing
        if key is None or key.bytes + size > self._max_bytes or self._clock() >= key.expires:
            return None
        if not key.nonces:
            if key.messages >= self._max_messages:
                return None
            self._new_nonces(key)
        ad = key.ad(field, context)
        key.bytes += size
        nonce = key.nonces.pop()
        return key.header + nonce + key.encrypt(nonce, value, ad)

    async def seal_many(
        self, field: str, values: Sequence[bytes], context: Mapping[str, str] | None = None
    ) -> list[bytes]:
        """Every value sealed as ``seal`` seals it, in order, all under one field and context: the bulk path, with
        an await only at a change of data key and the associated data looked up once per key. The message and byte
        limits are checked per value; the age limit once per nonce pool (at most 1,024 values, about a millisecond
        of sealing), where a clock read per value would cost 8% of the sealing."""
        sealed: list[bytes] = []
        append, max_bytes = sealed.append, self._max_bytes
        index, count = 0, len(values)
        while index < count:
            value = values[index]
            key = await self._ready_key(len(value))  # not past its age, a nonce in its pool
            ad, encrypt, nonces, header = key.ad(field, context), key.encrypt, key.nonces, key.header
            # As in ``seal``: the key just made ready seals this value (even one larger than max_bytes alone).
            key.bytes += len(value)
            nonce = nonces.pop()
            append(header + nonce + encrypt(nonce, value, ad))
            index += 1
            room, pop = max_bytes - key.bytes, nonces.pop
            try:
                for value in values[index : index + len(nonces)]:
                    if len(value) > room:
                        break
                    room -= len(value)
                    nonce = pop()
                    append(header + nonce + encrypt(nonce, value, ad))
                    index += 1
            finally:  # also when a value is not bytes-like: the bytes sealed so far are counted
                key.bytes = max_bytes - room
        return sealed

    async def warm(self, size: int = 0) -> None:
        """Make sure a data key is cached that may seal a value of ``size`` bytes (an RPC only if there is none
        or it has reached a limit), so that the ``seal_sync`` calls that follow seal without waiting."""
        await self._ready_key(size)

    async def _ready_key(self, size: int) -> _Key:
        """The key to seal a value of ``size`` bytes with, a nonce in its pool: the current one (its pool refilled)
        or a fresh one."""
        key = self._sealing
        if key is None or not self._usable(key, size, self._clock()):
            key = await self._fresh_key(size, self._clock())
        if not key.nonces:
            self._new_nonces(key)
        return key

    def _new_nonces(self, key: _Key) -> None:
        """A fresh pool of random nonces for ``key``, from one os.urandom call (a system call per value would cost
        more than the encryption); never more than its message limit leaves. The pool goes with its key: a forked
        child drops both."""
        used = key.messages
        count = min(NONCE_POOL_BYTES // NONCE_SIZE, self._max_messages - used)
        pool = os.urandom(NONCE_SIZE * count)
        key.nonces = [pool[i : i + NONCE_SIZE] for i in range(0, len(pool), NONCE_SIZE)]
        key.messages = used + count
        if self._prefetch and self._next is None and key is self._sealing:
            self._prefetch_if_due(used)  # here, once per pool, rather than on every seal

    def _prefetch_if_due(self, used: int) -> None:
        """Ask for the next data key in the background once the current one has used half of its messages
        (``used``: the values it has sealed) or bytes, or nears its age limit: early enough for the RPC to finish
        before the key is spent, even when sealing fast. The age lead is short, so that the key asked ahead is
        still young when it takes over (asking at half the age would halve every key's life)."""
        key, limits = self._sealing, self.limits
        if key is None:
            return
        if (
            2 * used < limits.max_messages
            and 2 * key.bytes < limits.max_bytes
            and self._clock() < key.expires - min(PREFETCH_LEAD, limits.max_age / 2)
        ):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # ``seal_sync`` outside an event loop: the key is fetched when ``seal`` or ``warm`` needs it
        self._next = loop.create_task(self._generate())
        # Its failure is met again by the call that needs the key; never "exception was never retrieved".
        self._next.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _generate(self) -> _Key:
        generated = await self._client.generate_data_key(key_name=self.key_name, context=self._key_context)
        self.data_keys_generated += 1
        header = header_for(self.key_name, generated.wrapped_key)
        expires = self._clock() + self.limits.max_age
        self._remember(header, _Key(generated.plaintext, header, expires))
        return _Key(generated.plaintext, header, expires)

    async def _fresh_key(self, size: int, now: float) -> _Key:
        async with self._refresh:
            if self._usable(self._sealing, size, now):
                assert self._sealing is not None
                return self._sealing  # another call already replaced it
            key: _Key | None = None
            if self._next is not None:
                prefetched, self._next = self._next, None
                try:
                    key = await prefetched
                except KmsError:
                    key = None  # ask again now, and let that call's error speak
            if key is None or not self._usable(key, size, self._clock()):
                key = await self._generate()
            # A value larger than max_bytes alone still gets this fresh key, which it then fills.
            self._sealing = key
            return key

    async def open(self, field: str, sealed: bytes, context: Mapping[str, str] | None = None) -> bytes:
        """The value ``seal`` sealed; CiphertextInvalidError for tampering, or the wrong field, context or key."""
        sealed, header, key = self._cached_key(sealed)
        if key is None:
            key = await self._unwrap(header, sealed)
        return _open_with(key, len(header), field, sealed, context)

    def open_sync(self, field: str, sealed: bytes, context: Mapping[str, str] | None = None) -> bytes | None:
        """``open`` without an await: the value when its data key is cached (unwrapped and not older than
        ``max_age``), else None: then ``await open(...)`` unwraps it. A value may be empty, so test the result
        with ``is None``. CiphertextInvalidError as for ``open``."""
        sealed, header, key = self._cached_key(sealed)
        return None if key is None else _open_with(key, len(header), field, sealed, context)

    def _cached_key(self, sealed: bytes) -> tuple[bytes, bytes, _Key | None]:
        """``sealed`` as bytes, its header, and the data key it names if cached and not older than ``max_age``;
        CiphertextInvalidError for a value of another named key."""
        if type(sealed) is not bytes:
            sealed = bytes(sealed)
        header, key_name = parse(sealed)
        if key_name != self.key_name:
            raise CiphertextInvalidError(f"sealed under the key {key_name!r}, not {self.key_name!r}")
        key = self._opening.get(header)
        return sealed, header, None if key is None or self._clock() >= key.expires else key

    async def _unwrap(self, header: bytes, sealed: bytes) -> _Key:
        """The data key of ``header``: one DecryptDataKey however many opens wait for it at once."""
        pending = self._unwrapping.get(header)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Key] = asyncio.get_running_loop().create_future()
        self._unwrapping[header] = future
        try:
            wrapped = header[5 + sealed[2] :]
            material = await self._client.decrypt_data_key(
                wrapped, key_name=self.key_name, context=self._key_context
            )
            self.data_keys_unwrapped += 1
            key = _Key(material, header, self._clock() + self.limits.max_age)
            self._remember(header, key)
            future.set_result(key)
            return key
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a future nobody else awaits logs nothing
            raise
        finally:
            del self._unwrapping[header]

    def _remember(self, header: bytes, key: _Key) -> None:
        self._opening[header] = key
        self._opening.move_to_end(header)
        while len(self._opening) > self.limits.max_open_keys:
            self._opening.popitem(last=False)


def _open_with(key: _Key, start: int, field: str, sealed: bytes, context: Mapping[str, str] | None) -> bytes:
    """The value of ``sealed`` (its header ``start`` bytes long) under ``key``."""
    nonce = sealed[start : start + NONCE_SIZE]
    try:
        return key.aead.decrypt(nonce, sealed[start + NONCE_SIZE :], key.ad(field, context))
    except InvalidTag:
        raise CiphertextInvalidError() from None


# A forked child must never seal with its parent's data key and nonce pool (the two would reuse nonces under one
# key): every encryptor alive at a fork forgets both in the child.
_LIVE: weakref.WeakSet[EnvelopeEncryptor] = weakref.WeakSet()


def _forget_all_in_child() -> None:
    for encryptor in list(_LIVE):
        encryptor.forget()


os.register_at_fork(after_in_child=_forget_all_in_child)
