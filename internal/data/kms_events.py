"""Cross-replica key-cache invalidation over Redis pub/sub (implements ``internal.biz.kms.KeyEvents``).

After a change to a named key the replica that made it publishes a ``KeyEvent`` on the channel
``<key_prefix>kms:key-events``; every other replica drops what it cached of that key. Pub/sub is
fire-and-forget (a disconnected replica misses messages), so the key ring also re-reads every key's
generation each ``kms.cache_recheck_interval``; after reconnecting, the subscriber asks for a full resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from internal.biz.kms import EventHandler, KeyEvent

log = logging.getLogger(__name__)

CHANNEL_SUFFIX = "kms:key-events"


def channel_name(key_prefix: str) -> str:
    return f"{key_prefix}{CHANNEL_SUFFIX}"


def encode(event: KeyEvent) -> str:
    return json.dumps({"kind": event.kind, "key": event.key_name, "version": event.version, "origin": event.origin})


def decode(data: bytes | str) -> KeyEvent | None:
    try:
        item = json.loads(data)
        return KeyEvent(str(item["kind"]), str(item["key"]), int(item["version"]), str(item["origin"]))
    except (ValueError, KeyError, TypeError):
        return None


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait for it, without swallowing the caller's own cancellation."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.error("kms key events task failed", exc_info=task.exception())


class RedisKeyEvents:
    def __init__(
        self, redis: aioredis.Redis, channel: str, *, reconnect_delay: float = 0.5, max_delay: float = 10.0
    ) -> None:
        self._redis = redis
        self.channel = channel
        self._reconnect_delay = reconnect_delay
        self._max_delay = max_delay
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def _subscribe(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
        except BaseException:
            await pubsub.aclose()
            raise
        self._pubsub = pubsub

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def start(self, handler: EventHandler) -> None:
        try:
            await self._subscribe()
        except (RedisError, OSError) as exc:
            log.warning("kms key events: subscribe failed, will retry", extra={"error": type(exc).__name__})
        self._task = asyncio.create_task(self._run(handler), name="kms-key-events")

    async def _deliver(self, handler: EventHandler, event: KeyEvent | None) -> None:
        try:
            await handler(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("kms key events: handler failed")

    async def _run(self, handler: EventHandler) -> None:
        delay = self._reconnect_delay
        while not self._closing:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                    log.info("kms key events: resubscribed")
                    delay = self._reconnect_delay
                    await self._deliver(handler, None)
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("kms key events: connection lost", extra={"error": type(exc).__name__})
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)
                continue
            if message is None or message.get("type") != "message":
                continue
            event = decode(message["data"])
            if event is not None:
                await self._deliver(handler, event)

    async def publish(self, event: KeyEvent) -> None:
        try:
            await self._redis.publish(self.channel, encode(event))
        except (RedisError, OSError) as exc:
            log.warning("kms key events: publish failed", extra={"error": type(exc).__name__})

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # Leave the loop between two reads: a cancellation that lands as a pub/sub read times out can
            # be swallowed by redis-py (seen with Sentinel), leaving the task reading forever.
            self._closing = True
            await asyncio.wait({task}, timeout=3.0)
            if not task.done():
                await cancel_and_wait(task)
        await self._drop()
