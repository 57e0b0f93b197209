"""Drive the workload from client processes while the main process rotates keys and injects faults."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import grpc

from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.hardening.cluster import Cluster
from tests.hardening.workload import WorkerConfig, WorkerResult, error_reason, run_worker

WARMUP = 4.0  # seconds for the spawned client processes to import grpc before the common start


@dataclass
class Event:
    at: float  # seconds after the load starts
    label: str
    action: Callable[[], None]
    done_at: float = 0.0


@dataclass
class LoadOutcome:
    results: list[WorkerResult]
    duration: float
    rotations: list[int] = field(default_factory=list)
    rotation_errors: Counter[str] = field(default_factory=Counter)
    events: list[Event] = field(default_factory=list)
    start_wall: float = 0.0

    @property
    def calls(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.results:
            total.update(r.calls)
        return total

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values()) + len(self.rotations) + sum(self.rotation_errors.values())

    @property
    def bad(self) -> list[str]:
        return [b for r in self.results for b in r.bad]

    def count(self, attr: str) -> int:
        return sum(len(getattr(r, attr)) for r in self.results)

    def counter(self, attr: str) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.results:
            total.update(getattr(r, attr))
        return total

    def latencies(self) -> list[float]:
        return [x for r in self.results for values in r.latencies.values() for x in values]

    def describe(self) -> str:
        lat = sorted(self.latencies())
        p99 = lat[int(len(lat) * 0.99)] if lat else 0.0
        ok = sum(n for k, n in self.calls.items() if k.endswith(" OK"))
        return (
            f"{self.total_calls} RPCs in {self.duration:.1f} s = {self.total_calls / self.duration:.0f} RPC/s "
            f"({ok} OK) from {len(self.results)} client processes; p99 {p99 * 1000:.0f} ms, "
            f"max {max(lat, default=0) * 1000:.0f} ms; {len(self.rotations)} RotateDataKey"
        )


def _rotator(cluster: Cluster, credential: str, every: float, stop: threading.Event, outcome: LoadOutcome) -> None:
    md = (("authorization", f"Bearer {credential}"),)
    i = 0
    while not stop.wait(every):
        for _ in range(6):
            targets = cluster.targets
            target = targets[i % len(targets)]
            i += 1
            try:
                with grpc.insecure_channel(target) as channel:
                    reply = kms_pb2_grpc.KMSStub(channel).RotateDataKey(
                        kms_pb2.RotateDataKeyRequest(reason="hardening"), metadata=md, timeout=10
                    )
                outcome.rotations.append(reply.key.version)
                break
            except grpc.RpcError as err:
                outcome.rotation_errors[f"{err.code().name} {error_reason(err)}"] += 1
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    break
                time.sleep(0.3)


def run_load(
    cluster: Cluster,
    credential: str,
    *,
    duration: float,
    workers: int = 3,
    rotate_every: float = 3.0,
    events: list[Event] | None = None,
    weights: dict[str, float] | None = None,
    lock_after_load: bool = False,
    seed: int = 0,
) -> LoadOutcome:
    events = sorted(events or [], key=lambda e: e.at)
    start_at = time.time() + WARMUP
    configs = [
        WorkerConfig(
            index=i,
            targets=cluster.targets,
            credential=credential,
            start_at=start_at,
            duration=duration,
            seed=seed * 100 + i,
            weights=weights,
            lock_after_load=lock_after_load,
        )
        for i in range(workers)
    ]
    outcome = LoadOutcome(results=[], duration=duration, events=events, start_wall=start_at)
    stop = threading.Event()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_worker, cfg) for cfg in configs]
        time.sleep(max(0.0, start_at - time.time()))
        rotator = threading.Thread(target=_rotator, args=(cluster, credential, rotate_every, stop, outcome))
        rotator.start()
        try:
            for event in events:
                time.sleep(max(0.0, start_at + event.at - time.time()))
                event.action()
                event.done_at = time.time() - start_at
        finally:
            time.sleep(max(0.0, start_at + duration - time.time()))
            stop.set()
            rotator.join()
        outcome.results = [f.result(timeout=duration + 120) for f in futures]
    outcome.duration = max([duration, *(r.elapsed for r in outcome.results)])
    return outcome
