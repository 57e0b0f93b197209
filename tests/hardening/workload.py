"""The mixed client workload, run in separate processes (multiprocessing, spawn).

Each worker talks to every replica (round robin), retries calls that fail with UNAVAILABLE or
DEADLINE_EXCEEDED on the next replica (what a client of a replicated service does) and records
everything the invariant checks need: the users it registered, every ciphertext it got back, every
refresh token the service accepted, the deliberate reuses and what they answered, the access tokens
it logged out, and the exact number of wrong-password logins it sent to its lock-test users.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc

ATTEMPT_DEADLINE = 10.0
MAX_ATTEMPTS = 6
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
NEVER = ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED")
MAX_WRONG = 7  # wrong-password logins sent to one lock-test user at most (the hard lock comes after 5)


def error_reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of an error ("" when the status carries none, e.g. transport errors)."""
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        return "?mismatch"
    if status is None:
        return ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def _never_sent(err: grpc.RpcError) -> bool:
    """A transport failure before the request left the client (the replica is gone, not mid-call)."""
    details = (err.details() or "").lower()
    return err.code() == grpc.StatusCode.UNAVAILABLE and ("failed to connect" in details or "refused" in details)


@dataclass
class WorkerConfig:
    index: int
    targets: list[str]
    credential: str
    start_at: float  # wall clock (time.time) when the load starts
    duration: float
    seed: int
    weights: dict[str, float] | None = None
    lock_users: int = 2
    lock_after_load: bool = False  # send the wrong-password logins after the load (Redis-restart phase)


@dataclass
class LockUser:
    username: str
    password: str
    access: str
    target_wrong: int
    wrong_sent: int = 0
    definite: bool = True  # False once one wrong login had an ambiguous outcome (counted or not?)


@dataclass
class WorkerResult:
    index: int
    calls: Counter[str] = field(default_factory=Counter)  # "Method CODE" per attempt
    reasons: Counter[str] = field(default_factory=Counter)  # "Method CODE REASON" for errors
    latencies: dict[str, list[float]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # INTERNAL/UNKNOWN/DEADLINE_EXCEEDED and wrong answers
    retries: int = 0
    retried_ok: int = 0
    gave_up: Counter[str] = field(default_factory=Counter)
    ambiguous: Counter[str] = field(default_factory=Counter)
    users: list[tuple[str, str]] = field(default_factory=list)
    lock_users: list[LockUser] = field(default_factory=list)
    ciphertexts: list[tuple[str, dict[str, str], bytes, bytes]] = field(default_factory=list)
    refresh_ok: list[str] = field(default_factory=list)
    reuses: list[tuple[str, str]] = field(default_factory=list)  # (reason on reuse, reason for the newest token)
    logged_out: list[str] = field(default_factory=list)
    decrypt_checked: int = 0
    operations: int = 0
    elapsed: float = 0.0
    # (wall time, method, code, latency) of attempts whose code was not OK, to judge fault windows
    errors_timeline: list[tuple[float, str, str, str, float]] = field(default_factory=list)


DEFAULT_WEIGHTS = {
    "register": 1.0,
    "login": 1.5,
    "refresh": 2.0,
    "reuse": 0.3,
    "logout": 0.8,
    "profile": 1.0,
    "encrypt": 4.0,
    "decrypt": 3.0,
    "encrypt_batch": 1.0,
    "decrypt_batch": 1.0,
    "wrong_login": 0.6,
}


class Worker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.result = WorkerResult(cfg.index)
        self.channels = [grpc.insecure_channel(t) for t in cfg.targets]
        self.auth = [auth_pb2_grpc.AuthStub(c) for c in self.channels]
        self.kms = [kms_pb2_grpc.KMSStub(c) for c in self.channels]
        self.next_replica = cfg.index
        self.kms_md = (("authorization", f"Bearer {cfg.credential}"),)
        self.sessions: list[dict[str, str]] = []
        self.counter = 0

    # ---- calls ---------------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        invoke: Callable[[int], Any],
        *,
        retry: bool = True,
        accept_after_retry: tuple[str, ...] = (),
        unsent_only: bool = False,
    ) -> tuple[Any, grpc.RpcError | None, bool]:
        """Call on successive replicas; returns (reply, last error, retried). ``accept_after_retry`` lists
        reasons that mean "an earlier attempt already did it" once a retry happened (ALREADY_EXISTS…).
        ``unsent_only``: retry only when the request never reached a server (connection refused)."""
        retried = False
        last: grpc.RpcError | None = None
        for attempt in range(MAX_ATTEMPTS if retry else 1):
            replica = self.next_replica % len(self.channels)
            self.next_replica += 1
            began = time.monotonic()
            try:
                reply = invoke(replica)
            except grpc.RpcError as err:
                latency = time.monotonic() - began
                code = err.code()
                why = error_reason(err)
                self._record(method, code.name, latency, why)
                last = err
                if code.name in NEVER:
                    self.result.bad.append(f"{method} {code.name} {why} {err.details()!r}")
                if retried and why in accept_after_retry:
                    self.result.ambiguous[f"{method} {why} after retry"] += 1
                    return None, err, True
                if unsent_only and not _never_sent(err):
                    return None, err, retried
                if retry and code in RETRYABLE:
                    retried = True
                    self.result.retries += 1
                    time.sleep(min(0.1 * 2**attempt, 1.0))
                    continue
                return None, err, retried
            latency = time.monotonic() - began
            self._record(method, "OK", latency, "")
            if retried:
                self.result.retried_ok += 1
            return reply, None, retried
        self.result.gave_up[method] += 1
        return None, last, retried

    def _record(self, method: str, code: str, latency: float, why: str) -> None:
        self.result.calls[f"{method} {code}"] += 1
        self.result.latencies.setdefault(method, []).append(latency)
        if code != "OK":
            self.result.reasons[f"{method} {code} {why}"] += 1
            self.result.errors_timeline.append((time.time(), method, code, why, latency))

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.result.bad.append(message)

    # ---- operations ----------------------------------------------------------------------------------

    def _new_user(self) -> tuple[str, str, str, str]:
        self.counter += 1
        username = f"h{self.cfg.index}_{secrets.token_hex(5)}_{self.counter}"
        password = "Pw" + secrets.token_hex(6) + "9"
        email = f"{username}@example.com"
        # China mobile numbers (valid for libphonenumber), unique per worker seed within a run
        phone = f"+8613{(self.cfg.seed * 10**5 + self.counter) % 10**9:09d}" if self.counter % 3 else ""
        return username, password, email, phone

    def register(self) -> tuple[str, str] | None:
        username, password, email, phone = self._new_user()
        request = auth_pb2.RegisterRequest(username=username, password=password, email=email, phone=phone)
        reply, err, retried = self.call(
            "Register",
            lambda r: self.auth[r].Register(request, timeout=ATTEMPT_DEADLINE),
            accept_after_retry=("USER_EXISTS",),
        )
        if reply is None and not retried:
            self.expect(False, f"Register failed: {err.code().name if err else '?'} {error_reason(err) if err else ''}")
        if reply is not None or (retried and err is not None and error_reason(err) == "USER_EXISTS"):
            self.result.users.append((username, password))
            return username, password
        return None

    def login(self, username: str, password: str) -> dict[str, str] | None:
        request = auth_pb2.LoginRequest(username=username, password=password)
        reply, err, retried = self.call("Login", lambda r: self.auth[r].Login(request, timeout=ATTEMPT_DEADLINE))
        if reply is None:
            self.expect(retried, f"Login failed: {err.code().name if err else '?'} {error_reason(err) if err else ''}")
            return None
        self.expect(bool(reply.access_token and reply.refresh_token), "Login OK without tokens")
        return {"user": username, "access": reply.access_token, "refresh": reply.refresh_token}

    def op_login(self) -> None:
        if not self.result.users:
            return
        session = self.login(*self.rng.choice(self.result.users))
        if session:
            self.sessions.append(session)
            del self.sessions[:-30]

    def op_refresh(self, reuse: bool = False) -> None:
        if not self.sessions:
            return
        session = self.sessions.pop(self.rng.randrange(len(self.sessions)))
        old = session["refresh"]
        request = auth_pb2.RefreshTokenRequest(refresh_token=old)
        reply, err, retried = self.call(
            "RefreshToken",
            lambda r: self.auth[r].RefreshToken(request, timeout=ATTEMPT_DEADLINE),
            accept_after_retry=("REFRESH_TOKEN_REUSED",),
        )
        if reply is None:
            if not retried:
                self.expect(False, f"RefreshToken of a fresh token failed: {err.code().name if err else '?'}")
            return  # ambiguous outcome (the first attempt may have rotated it): drop the session
        self.result.refresh_ok.append(old)
        session = {**session, "access": reply.access_token, "refresh": reply.refresh_token}
        if not reuse:
            self.sessions.append(session)
            return
        # Deliberate reuse of the consumed token: the family must be revoked, the newest token with it.
        again = auth_pb2.RefreshTokenRequest(refresh_token=old)
        _, err, _ = self.call("RefreshToken", lambda r: self.auth[r].RefreshToken(again, timeout=ATTEMPT_DEADLINE))
        first = error_reason(err) if err is not None else "OK"
        newest = auth_pb2.RefreshTokenRequest(refresh_token=session["refresh"])
        _, err2, _ = self.call("RefreshToken", lambda r: self.auth[r].RefreshToken(newest, timeout=ATTEMPT_DEADLINE))
        second = error_reason(err2) if err2 is not None else "OK"
        if "SERVICE_UNAVAILABLE" in (first, second):
            # Every retry met the outage: the service refused to decide, which is right, and the check
            # learned nothing (an INTERNAL or a wrong decision still lands in ``reuses``).
            self.result.ambiguous["RefreshToken reuse check met the outage"] += 1
            return
        self.result.reuses.append((first, second))

    def op_logout(self) -> None:
        if not self.sessions:
            return
        session = self.sessions.pop(self.rng.randrange(len(self.sessions)))
        md = (("authorization", f"Bearer {session['access']}"),)
        reply, err, retried = self.call(
            "Logout",
            lambda r: self.auth[r].Logout(auth_pb2.LogoutRequest(), metadata=md, timeout=ATTEMPT_DEADLINE),
            accept_after_retry=("TOKEN_REVOKED",),
        )
        if reply is not None or (retried and err is not None and error_reason(err) == "TOKEN_REVOKED"):
            self.result.logged_out.append(session["access"])

    def op_profile(self) -> None:
        if not self.sessions:
            return
        session = self.rng.choice(self.sessions)
        md = (("authorization", f"Bearer {session['access']}"),)
        reply, _, _ = self.call(
            "GetProfile",
            lambda r: self.auth[r].GetProfile(auth_pb2.GetProfileRequest(), metadata=md, timeout=ATTEMPT_DEADLINE),
        )
        if reply is not None:
            self.expect(reply.username == session["user"], "GetProfile answered for another user")

    def _item(self) -> tuple[str, dict[str, str], bytes]:
        self.counter += 1
        field_name = self.rng.choice(["email", "phone", "note", "users.name"])
        context = {"tenant": f"w{self.cfg.index}", "record": str(self.counter)} if self.counter % 4 else {}
        return field_name, context, os.urandom(self.rng.randint(0, 512))

    def op_encrypt(self) -> None:
        field_name, context, plaintext = self._item()
        request = kms_pb2.EncryptRequest(field=field_name, plaintext=plaintext, context=context)
        reply, _, _ = self.call(
            "Encrypt", lambda r: self.kms[r].Encrypt(request, metadata=self.kms_md, timeout=ATTEMPT_DEADLINE)
        )
        if reply is not None:
            self.result.ciphertexts.append((field_name, context, plaintext, reply.ciphertext))

    def op_encrypt_batch(self) -> None:
        items = [self._item() for _ in range(self.rng.randint(2, 20))]
        request = kms_pb2.EncryptBatchRequest(
            items=[kms_pb2.EncryptItem(field=f, plaintext=p, context=c) for f, c, p in items]
        )
        reply, _, _ = self.call(
            "EncryptBatch",
            lambda r: self.kms[r].EncryptBatch(request, metadata=self.kms_md, timeout=ATTEMPT_DEADLINE),
        )
        if reply is None:
            return
        self.expect(len(reply.results) == len(items), "EncryptBatch answered a different number of items")
        versions = {res.key_version for res in reply.results}
        self.expect(len(versions) == 1, f"EncryptBatch used several keys: {versions}")
        for (f, c, p), res in zip(items, reply.results, strict=False):
            self.expect(res.status.code == 0, f"EncryptBatch item failed: {res.status.code}")
            if res.status.code == 0:
                self.result.ciphertexts.append((f, c, p, res.ciphertext))

    def op_decrypt(self) -> None:
        if not self.result.ciphertexts:
            return
        f, c, p, ct = self.rng.choice(self.result.ciphertexts)
        request = kms_pb2.DecryptRequest(ciphertext=ct, field=f, context=c)
        reply, err, _ = self.call(
            "Decrypt", lambda r: self.kms[r].Decrypt(request, metadata=self.kms_md, timeout=ATTEMPT_DEADLINE)
        )
        if reply is not None:
            self.result.decrypt_checked += 1
            self.expect(reply.plaintext == p, "Decrypt returned a different plaintext")
        elif err is not None and err.code() not in RETRYABLE:
            self.expect(False, f"Decrypt of a ciphertext it issued failed: {err.code().name} {error_reason(err)}")

    def op_decrypt_batch(self) -> None:
        if not self.result.ciphertexts:
            return
        chosen = self.rng.sample(self.result.ciphertexts, min(len(self.result.ciphertexts), self.rng.randint(2, 20)))
        request = kms_pb2.DecryptBatchRequest(
            items=[kms_pb2.DecryptItem(ciphertext=ct, field=f, context=c) for f, c, _, ct in chosen]
        )
        reply, _, _ = self.call(
            "DecryptBatch",
            lambda r: self.kms[r].DecryptBatch(request, metadata=self.kms_md, timeout=ATTEMPT_DEADLINE),
        )
        if reply is None:
            return
        for (_, _, p, _), res in zip(chosen, reply.results, strict=False):
            self.result.decrypt_checked += 1
            self.expect(res.status.code == 0 and res.plaintext == p, f"DecryptBatch item lost: {res.status.code}")

    def setup_lock_users(self) -> None:
        for _ in range(self.cfg.lock_users):
            created = self.register()
            if created is None:
                continue
            self.result.users.pop()  # lock-test users are checked through LockStatus, not by logging in
            session = self.login(*created)
            if session is None:
                continue
            target = self.rng.randint(1, MAX_WRONG)
            self.result.lock_users.append(LockUser(created[0], created[1], session["access"], target))

    def op_wrong_login(self) -> None:
        pending = [u for u in self.result.lock_users if u.definite and u.wrong_sent < u.target_wrong]
        if not pending:
            return
        user = self.rng.choice(pending)
        request = auth_pb2.LoginRequest(username=user.username, password=user.password + "x")
        reply, err, _ = self.call(
            "Login(wrong)", lambda r: self.auth[r].Login(request, timeout=ATTEMPT_DEADLINE), unsent_only=True
        )
        why = error_reason(err) if err is not None else "OK"
        if why == "RATE_LIMITED":
            return  # refused before it was counted (the per-source delay)
        if why in ("INVALID_CREDENTIALS", "ACCOUNT_LOCKED"):
            user.wrong_sent += 1
            # Locked or not, a wrong password only ever learns INVALID_CREDENTIALS (docs/security.md).
            self.expect(why == "INVALID_CREDENTIALS", f"wrong login #{user.wrong_sent} answered {why}")
        else:
            user.definite = False  # e.g. UNAVAILABLE: the attempt may or may not have been counted
            self.result.ambiguous["Login(wrong) " + why] += 1
        self.expect(reply is None, "a wrong password logged in")

    # ---- loop ----------------------------------------------------------------------------------------

    def run(self) -> WorkerResult:
        delay = self.cfg.start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        began = time.monotonic()
        for _ in range(2):
            self.register()
        self.setup_lock_users()
        weights = dict(self.cfg.weights or DEFAULT_WEIGHTS)
        if self.cfg.lock_after_load:
            weights.pop("wrong_login", None)
        names = list(weights)
        ops: dict[str, Callable[[], None]] = {
            "register": lambda: (self.register(), None)[1],
            "login": self.op_login,
            "refresh": self.op_refresh,
            "reuse": lambda: self.op_refresh(reuse=True),
            "logout": self.op_logout,
            "profile": self.op_profile,
            "encrypt": self.op_encrypt,
            "decrypt": self.op_decrypt,
            "encrypt_batch": self.op_encrypt_batch,
            "decrypt_batch": self.op_decrypt_batch,
            "wrong_login": self.op_wrong_login,
        }
        end = self.cfg.start_at + self.cfg.duration
        while time.time() < end:
            ops[self.rng.choices(names, [weights[n] for n in names])[0]]()
            self.result.operations += 1
        if self.cfg.lock_after_load:
            for user in self.result.lock_users:
                while user.definite and user.wrong_sent < user.target_wrong:
                    self.op_wrong_login()
        self.result.elapsed = time.monotonic() - began
        for channel in self.channels:
            channel.close()
        return self.result


def run_worker(cfg: WorkerConfig) -> WorkerResult:
    """Entry point of a worker process."""
    return Worker(cfg).run()
