"""Account lifecycle over gRPC against two real server processes sharing PostgreSQL and Redis.

Every lifecycle RPC with its success and its error reasons; reset codes and address proofs read from the
development outbox; revocation made on one server honoured by the other; the reset reply and its timing
the same for a known and an unknown address; and after DeleteAccount no trace of the PII in a pg_dump.
"""

from __future__ import annotations

import base64
import json
import re
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from api.gen.auth.v1 import auth_pb2
from tests.e2e.account_helpers import (
    CALL_TIMEOUT,
    CODE,
    Client,
    Outbox,
    expect_error,
    wrong_totp_code,
)
from tests.e2e.harness import (
    ServerProcess,
    auth,
    query,
    start_server,
    stored_credential,
    totp_code,
    unique_account,
)
from tests.e2e.harness import cli as harness_cli

pytestmark = pytest.mark.e2e

PER_TARGET = 100
LIMITS = {
    "APP__AUTH__LOGIN_RATE_LIMIT": "5000",
    "APP__AUTH__CAPTCHA__SEND_LIMIT_PER_CLIENT": "5000",
    "APP__AUTH__CAPTCHA__SEND_LIMIT_PER_TARGET": str(PER_TARGET),
}
JSON = {"Content-Type": "application/json"}
RESET_ID = re.compile(r"[A-Za-z0-9_-]{32}")


@dataclass
class Cluster:
    servers: list[ServerProcess]
    outbox: Outbox
    database_url: str

    def client(self, index: int, user_agent: str = "") -> Client:
        return Client(self.servers[index], self.outbox, user_agent)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[Cluster]:
    """Two servers (same database, Redis prefix and signing key), captchas on, the development outbox."""
    tmp = tmp_path_factory.mktemp("account")
    prefix = f"test:{uuid.uuid4().hex[:10]}:"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "APP__DATA__REDIS__KEY_PREFIX": prefix,
        "APP__DATA__DATA_DIR": str(tmp / "data"),
        **LIMITS,
    }
    servers = [start_server(tmp, env)]
    outbox = Outbox(redis_url, prefix)
    try:
        servers[0].wait_serving()  # the first one migrates and creates the signing key
        servers.append(start_server(tmp, env))
        servers[1].wait_serving()
        yield Cluster(servers, outbox, database_url)
    finally:
        outbox.close()
        for server in servers:
            server.terminate()


@pytest.fixture
def clients(cluster: Cluster) -> Iterator[tuple[Client, Client]]:
    a, b = cluster.client(0), cluster.client(1)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def user_id(database_url: str, username: str) -> int:
    rows = query(database_url, "SELECT id FROM users WHERE lower(username) = lower($1)", username)
    assert len(rows) == 1
    return int(rows[0]["id"])


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return harness_cli(server.env, *args, timeout=120)


# ---------------------------------------------------------------------------------------------------
# 1. ChangePassword


def test_change_password_ends_other_sessions_on_every_server(cluster: Cluster, clients: tuple[Client, Client]) -> None:
    a, b = clients
    alice = unique_account("cpw")
    a.register(alice)
    here, elsewhere = a.login(alice["email"], alice["password"]), b.login(alice["email"], alice["password"])
    new_password = "a completely new passphrase 7"

    expect_error(
        lambda: a.stub.ChangePassword(auth_pb2.ChangePasswordRequest(), timeout=CALL_TIMEOUT),
        CODE.UNAUTHENTICATED,
        "TOKEN_MISSING",
    )
    expect_error(
        lambda: a.change_password(here.access_token, "", new_password), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR"
    )
    expect_error(
        lambda: a.change_password(here.access_token, "Wrong-password-1", new_password),
        CODE.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    for weak in ("password", "short", f"{alice['username']}-is-me"):
        expect_error(
            lambda weak=weak: a.change_password(here.access_token, alice["password"], weak),
            CODE.INVALID_ARGUMENT,
            "PASSWORD_WEAK",
        )
    expect_error(
        lambda: a.change_password("not-a-token", alice["password"], new_password), CODE.UNAUTHENTICATED, "TOKEN_INVALID"
    )

    assert a.change_password(here.access_token, alice["password"], new_password).sessions_ended == 1
    # The owner is told at the account's email; the notice is fixed text, no password or code in it.
    assert cluster.outbox.messages(alice["email"])[0] == "notice: the password of your account was changed"
    # The caller's session goes on (on either server); the other one is over, access and refresh token alike.
    assert b.profile(here.access_token).username == alice["username"]
    assert a.refresh(here.refresh_token).access_token
    expect_error(lambda: a.profile(elsewhere.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    expect_error(lambda: b.refresh(elsewhere.refresh_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    expect_error(lambda: b.login(alice["email"], alice["password"]), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    assert b.login(alice["email"], new_password).access_token

    uid = user_id(cluster.database_url, alice["username"])
    audited = query(
        cluster.database_url,
        "SELECT outcome, details FROM audit_events WHERE event = 'account.password_change' AND subject = $1",
        str(uid),
    )
    # One wrong password, one change.
    assert sorted(r["outcome"] for r in audited) == ["failure", "success"]
    assert all(new_password not in r["details"] and alice["password"] not in r["details"] for r in audited)


REAUTHENTICATING = ("ChangePassword", "ChangeEmail", "ChangePhone", "DeleteAccount")


def reauthenticating_call(client: Client, rpc: str, token: str) -> Callable[[str, str], object]:
    """``rpc`` as a call of (password, totp_code); an address change carries a valid proof of its new address."""
    if rpc == "ChangePassword":
        return lambda password, totp: client.change_password(token, password, "changed behind a second factor 8", totp)
    if rpc == "ChangeEmail":
        email = f"tfa.{uuid.uuid4().hex[:8]}@example.org"
        proof = client.code("email", email)
        return lambda password, totp: client.change_email(token, email, proof, password, totp)
    if rpc == "ChangePhone":
        phone = "+8613" + f"{uuid.uuid4().int % 10**9:09d}"
        sms = client.code("sms", phone)
        return lambda password, totp: client.change_phone(token, phone, sms, password, totp)
    return lambda password, totp: client.delete(token, password, "", totp)


AUDIT_EVENT = {
    "ChangePassword": "account.password_change",
    "ChangeEmail": "account.email_change",
    "ChangePhone": "account.phone_change",
    "DeleteAccount": "account.delete",
}


@pytest.mark.parametrize("rpc", REAUTHENTICATING)
def test_reauthentication_is_throttled_and_tells_a_hard_lock_only_to_the_right_password(
    cluster: Cluster, clients: tuple[Client, Client], rpc: str
) -> None:
    """Re-checks count like logins: past the free attempts the source waits; a hard lock is told only to the
    right password."""
    a, b = clients
    user = unique_account("rck")
    a.register(user, with_phone=False)
    call = reauthenticating_call(a, rpc, a.login(user["email"], user["password"]).access_token)
    for _ in range(5):
        expect_error(lambda: call("Wrong-password-1", ""), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    info = expect_error(lambda: call(user["password"], ""), CODE.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert int(info.metadata["retry_after"]) >= 1
    audited = query(
        cluster.database_url,
        "SELECT outcome FROM audit_events WHERE event = $1 AND subject = $2",
        AUDIT_EVENT[rpc],
        str(user_id(cluster.database_url, user["username"])),
    )
    # Five wrong passwords; the throttled attempt never reached the check.
    assert [r["outcome"] for r in audited] == ["failure"] * 5

    locked = unique_account("rckl")
    a.register(locked, with_phone=False)
    locked_call = reauthenticating_call(b, rpc, b.login(locked["email"], locked["password"]).access_token)
    locking = cli(cluster.servers[0], "users", "lock", locked["username"])
    assert locking.returncode == 0, locking.stderr
    expect_error(lambda: locked_call("Wrong-password-1", ""), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    info = expect_error(lambda: locked_call(locked["password"], ""), CODE.PERMISSION_DENIED, "ACCOUNT_LOCKED")
    assert int(info.metadata["unlock_time"]) > time.time()


@pytest.mark.parametrize("rpc", REAUTHENTICATING)
def test_reauthentication_demands_the_totp_code_when_enabled(clients: tuple[Client, Client], rpc: str) -> None:
    """With TOTP on, the password alone no longer suffices: the same factors and reasons as Login."""
    a, b = clients
    user = unique_account("tfa")
    a.register(user)
    session = a.login(user["email"], user["password"])
    secret, step = a.enable_totp(session.access_token, user["password"])
    call = reauthenticating_call(a, rpc, session.access_token)
    password = user["password"]

    expect_error(lambda: call(password, ""), CODE.UNAUTHENTICATED, "TOTP_REQUIRED")
    expect_error(lambda: call(password, wrong_totp_code(secret, step)), CODE.UNAUTHENTICATED, "TOTP_INVALID")
    expect_error(lambda: call(password, "12ab56"), CODE.UNAUTHENTICATED, "TOTP_INVALID")
    # The code the enrolment confirmed is spent (Login's replay protection).
    expect_error(lambda: call(password, totp_code(secret, step)), CODE.UNAUTHENTICATED, "TOTP_INVALID")
    # A wrong password with a good code says nothing about the code, and does not spend it.
    fresh = totp_code(secret, step + 1)
    expect_error(lambda: call("Wrong-password-1", fresh), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    call(password, fresh)

    if rpc == "DeleteAccount":
        expect_error(lambda: b.profile(session.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
        return
    if rpc == "ChangePassword":
        password = "changed behind a second factor 8"
    # Used once: the same code cannot authorise a second change.
    expect_error(lambda: call(password, fresh), CODE.UNAUTHENTICATED, "TOTP_INVALID")
    assert b.profile(session.access_token).totp_enabled


# ---------------------------------------------------------------------------------------------------
# 3. Sessions


def test_sessions_list_revoke_and_admin(cluster: Cluster, clients: tuple[Client, Client]) -> None:
    a, b = clients
    alice, bob = unique_account("ses"), unique_account("sesb")
    a.register(alice)
    a.register(bob, with_phone=False)
    phone_app, laptop = cluster.client(0, "phone-app/2.1"), cluster.client(1, "laptop-browser/7")
    try:
        phone = phone_app.login(alice["email"], alice["password"])
        lap = laptop.login(alice["email"], alice["password"])
        time.sleep(1.1)  # so the refresh below is visibly later than the login
        lap = laptop.refresh(lap.refresh_token)
    finally:
        phone_app.close()
        laptop.close()
    bob_session = b.login(bob["email"], bob["password"])

    listed = a.sessions(phone.access_token).sessions
    assert len(listed) == 2
    by_agent = {s.user_agent.split()[0]: s for s in listed}
    assert set(by_agent) == {"phone-app/2.1", "laptop-browser/7"}
    mine, other = by_agent["phone-app/2.1"], by_agent["laptop-browser/7"]
    assert mine.current and not other.current
    assert {mine.client_address, other.client_address} == {"127.0.0.1"}
    assert mine.last_used_at == mine.created_at and other.last_used_at > other.created_at
    assert mine.expires_at > mine.created_at + 86400

    # Over HTTP/JSON too, at its google.api.http route.
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.servers[1].http_port}/api/v1/auth/sessions",
        headers={"Authorization": f"Bearer {phone.access_token}"},
    )
    with urllib.request.urlopen(request, timeout=CALL_TIMEOUT) as response:
        body = json.load(response)
    assert sorted(s["sessionId"] for s in body["sessions"]) == sorted(s.session_id for s in listed)

    expect_error(
        lambda: a.stub.ListSessions(auth_pb2.ListSessionsRequest(), timeout=CALL_TIMEOUT),
        CODE.UNAUTHENTICATED,
        "TOKEN_MISSING",
    )
    expect_error(lambda: a.sessions(phone.access_token, bob["username"]), CODE.PERMISSION_DENIED, "PERMISSION_DENIED")
    expect_error(lambda: a.revoke(phone.access_token, ""), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR")
    for unknown in (str(uuid.uuid4()), "not-a-session", bob_session_id(a, bob_session.access_token)):
        expect_error(lambda unknown=unknown: a.revoke(phone.access_token, unknown), CODE.NOT_FOUND, "SESSION_NOT_FOUND")

    # Revoked on server 0, refused on server 1.
    assert a.revoke(phone.access_token, other.session_id).success
    expect_error(lambda: b.profile(lap.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    expect_error(lambda: b.refresh(lap.refresh_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    expect_error(lambda: a.revoke(phone.access_token, other.session_id), CODE.NOT_FOUND, "SESSION_NOT_FOUND")
    assert [s.session_id for s in a.sessions(phone.access_token).sessions] == [mine.session_id]

    third, fourth = b.login(alice["email"], alice["password"]), b.login(alice["email"], alice["password"])
    assert a.revoke_others(phone.access_token).sessions_ended == 2
    for ended in (third, fourth):
        expect_error(lambda ended=ended: b.profile(ended.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    assert b.profile(phone.access_token).username == alice["username"]
    assert a.revoke_others(phone.access_token).sessions_ended == 0

    # An auth.admin credential names the user; anything less may not.
    admin = stored_credential(cluster.database_url, "auth.admin")
    introspector = stored_credential(cluster.database_url, "auth.introspect")
    as_admin = a.sessions(admin, alice["username"]).sessions
    assert [s.session_id for s in as_admin] == [mine.session_id] and not as_admin[0].current
    expect_error(lambda: a.sessions(admin), CODE.PERMISSION_DENIED, "PERMISSION_DENIED")
    expect_error(lambda: a.sessions(admin, "nobody_" + uuid.uuid4().hex[:6]), CODE.NOT_FOUND, "USER_NOT_FOUND")
    expect_error(lambda: a.sessions(introspector, alice["username"]), CODE.PERMISSION_DENIED, "PERMISSION_DENIED")
    expect_error(lambda: a.sessions("akms_" + "x" * 43, alice["username"]), CODE.UNAUTHENTICATED, "TOKEN_INVALID")
    assert b.revoke(admin, mine.session_id, alice["username"]).success
    expect_error(lambda: a.profile(phone.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    assert a.revoke_others(admin, bob["username"]).sessions_ended == 1
    stranger = "nobody_" + uuid.uuid4().hex[:6]
    expect_error(lambda: a.revoke_others(admin, stranger), CODE.NOT_FOUND, "USER_NOT_FOUND")
    expect_error(lambda: a.revoke(admin, mine.session_id, stranger), CODE.NOT_FOUND, "USER_NOT_FOUND")
    expect_error(lambda: a.revoke_others(bob_session.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    fresh = a.login(alice["email"], alice["password"])
    expect_error(
        lambda: a.revoke_others(fresh.access_token, bob["username"]), CODE.PERMISSION_DENIED, "PERMISSION_DENIED"
    )
    expect_error(
        lambda: a.revoke(fresh.access_token, mine.session_id, bob["username"]),
        CODE.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    expect_error(lambda: b.profile(bob_session.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")

    uid = user_id(cluster.database_url, alice["username"])
    events = {
        r["event"] for r in query(cluster.database_url, "SELECT event FROM audit_events WHERE subject = $1", str(uid))
    }
    assert {"account.session_revoke", "account.sessions_revoke"} <= events


def bob_session_id(client: Client, token: str) -> str:
    sessions = client.sessions(token).sessions
    assert len(sessions) == 1
    return sessions[0].session_id


# ---------------------------------------------------------------------------------------------------
# 2. Password reset


def test_password_reset_by_email_and_phone(cluster: Cluster, clients: tuple[Client, Client]) -> None:
    a, b = clients
    alice = unique_account("rst")
    a.register(alice)
    session = b.login(alice["email"], alice["password"])
    new_password = "reset to something new 42"

    seen = len(cluster.outbox.messages(alice["email"]))
    reply = a.request_reset(alice["email"])
    assert RESET_ID.fullmatch(reply.reset_id)
    code = cluster.outbox.wait_new(alice["email"], seen)
    assert re.fullmatch(r"\d{6}", code)

    expect_error(lambda: a.confirm_reset(reply.reset_id, "", new_password), CODE.INVALID_ARGUMENT, "CAPTCHA_REQUIRED")
    expect_error(lambda: a.confirm_reset("x" * 32, code, new_password), CODE.INVALID_ARGUMENT, "CAPTCHA_EXPIRED")
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    expect_error(lambda: a.confirm_reset(reply.reset_id, wrong, new_password), CODE.INVALID_ARGUMENT, "CAPTCHA_INVALID")
    # A weak password is refused before the code is spent.
    expect_error(lambda: a.confirm_reset(reply.reset_id, code, "password"), CODE.INVALID_ARGUMENT, "PASSWORD_WEAK")

    locking = cli(cluster.servers[0], "users", "lock", alice["username"])
    assert locking.returncode == 0, locking.stderr
    expect_error(lambda: a.login(alice["email"], alice["password"]), CODE.PERMISSION_DENIED, "ACCOUNT_LOCKED")

    assert b.confirm_reset(reply.reset_id, code, new_password).success
    assert cluster.outbox.messages(alice["email"])[0] == "notice: the password of your account was reset"
    # Every session ended (on both servers), the lock is gone, the code is spent.
    expect_error(lambda: a.profile(session.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    expect_error(lambda: a.refresh(session.refresh_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    expect_error(lambda: b.login(alice["email"], alice["password"]), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    fresh = b.login(alice["email"], new_password)
    assert not a.stub.LockStatus(
        auth_pb2.LockStatusRequest(username=alice["username"]), metadata=auth(fresh.access_token), timeout=30
    ).locked
    expect_error(
        lambda: a.confirm_reset(reply.reset_id, code, "yet another passphrase 9"),
        CODE.INVALID_ARGUMENT,
        "CAPTCHA_EXPIRED",
    )

    # By phone, and the attempt limit: the fifth wrong code ends the reset.
    seen = len(cluster.outbox.messages(alice["phone"]))
    by_phone = a.request_reset(alice["phone"])
    phone_code = cluster.outbox.wait_new(alice["phone"], seen)
    wrong = f"{(int(phone_code) + 1) % 1_000_000:06d}"
    for _ in range(4):
        expect_error(
            lambda: a.confirm_reset(by_phone.reset_id, wrong, "phone reset passphrase 1"),
            CODE.INVALID_ARGUMENT,
            "CAPTCHA_INVALID",
        )
    assert a.confirm_reset(by_phone.reset_id, phone_code, "phone reset passphrase 1").success
    # Reset by phone: the notice still goes to the account's email.
    assert cluster.outbox.messages(alice["email"])[0] == "notice: the password of your account was reset"
    again = a.request_reset(alice["phone"])
    for _ in range(5):
        expect_error(
            lambda: a.confirm_reset(again.reset_id, wrong, "phone reset passphrase 2"),
            CODE.INVALID_ARGUMENT,
            "CAPTCHA_INVALID",
        )
    expect_error(
        lambda: a.confirm_reset(again.reset_id, wrong, "phone reset passphrase 2"),
        CODE.INVALID_ARGUMENT,
        "CAPTCHA_EXPIRED",
    )

    for bad in ("", "not an address", "+12", "a@" + "b" * 300 + ".com"):
        expect_error(lambda bad=bad: a.request_reset(bad), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR")

    # An address nobody has: the same reply, nothing sent, no code can complete it.
    nobody = f"nobody.{uuid.uuid4().hex[:8]}@example.com"
    unknown = a.request_reset(nobody)
    assert RESET_ID.fullmatch(unknown.reset_id) and unknown.ListFields()[0][0].name == "reset_id"
    time.sleep(1)
    assert cluster.outbox.messages(nobody) == []
    expect_error(
        lambda: a.confirm_reset(unknown.reset_id, "123456", "nobody's passphrase 3"),
        CODE.INVALID_ARGUMENT,
        "CAPTCHA_INVALID",
    )

    # Rate limited per target, whoever (if anyone) has it.
    for target in (alice["email"], f"limited.{uuid.uuid4().hex[:8]}@example.com"):
        already = 1 if target == alice["email"] else 0
        for _ in range(PER_TARGET - already):
            a.request_reset(target)
        info = expect_error(lambda target=target: b.request_reset(target), CODE.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert int(info.metadata["retry_after"]) >= 1

    uid = user_id(cluster.database_url, alice["username"])
    outcomes = query(
        cluster.database_url,
        "SELECT count(*) AS n FROM audit_events WHERE event = 'account.password_reset' AND subject = $1",
        str(uid),
    )
    assert outcomes[0]["n"] == 2
    # Only keyed hashes are stored: the code is nowhere in Redis.
    records = cluster.outbox.hashes("reset:")
    assert records and all(set(r) == {"code_hash", "user", "attempts"} and code not in str(r) for r in records)


def test_reset_reply_and_timing_do_not_tell_whether_an_account_exists(
    cluster: Cluster, clients: tuple[Client, Client]
) -> None:
    """Same reply; p50 latencies of 30 requests each (interleaved, one run) within 10% of each other.

    A branch that does more work is slower in every round; the scheduler noise of a loaded machine is not,
    so a round is repeated (at most five in all) only when its medians differ by more than 10%.
    """
    a, _ = clients
    alice = unique_account("enum")
    a.register(alice, with_phone=False)
    nobody = f"nobody.{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(5):  # warm both paths
        a.request_reset(alice["email"])
        a.request_reset(nobody)
    rounds = []
    for _ in range(5):
        timings: dict[str, list[float]] = {"known": [], "unknown": []}
        replies: dict[str, set[tuple[str, ...]]] = {"known": set(), "unknown": set()}
        for i in range(60):
            kind = ("known", "unknown")[(i + i // 2) % 2]  # K U U K K U ...: neither always goes first
            target = alice["email"] if kind == "known" else nobody
            started = time.perf_counter()
            reply = a.request_reset(target)
            timings[kind].append(time.perf_counter() - started)
            assert RESET_ID.fullmatch(reply.reset_id)
            replies[kind].add(tuple(f.name for f, _ in reply.ListFields()))
        assert replies["known"] == replies["unknown"] == {("reset_id",)}
        assert len(timings["known"]) == len(timings["unknown"]) == 30
        known, unknown = statistics.median(timings["known"]), statistics.median(timings["unknown"])
        rounds.append((round(known * 1000, 2), round(unknown * 1000, 2)))
        print(f"reset p50 known={known * 1000:.2f} ms unknown={unknown * 1000:.2f} ms")
        if abs(known - unknown) <= 0.10 * max(known, unknown):
            break
    else:
        pytest.fail(f"p50 (ms) known vs unknown differ by more than 10% in every round: {rounds}")


# ---------------------------------------------------------------------------------------------------
# 4. Changing email or phone


def test_change_email_and_phone(cluster: Cluster, clients: tuple[Client, Client]) -> None:
    a, b = clients
    alice, bob = unique_account("chg"), unique_account("chgb")
    a.register(alice)
    a.register(bob)
    session = a.login(alice["email"], alice["password"])
    token, password = session.access_token, alice["password"]
    new_email = f"moved.{uuid.uuid4().hex[:8]}@example.org"

    expect_error(
        lambda: a.stub.ChangeEmail(auth_pb2.ChangeEmailRequest(new_email=new_email), timeout=CALL_TIMEOUT),
        CODE.UNAUTHENTICATED,
        "TOKEN_MISSING",
    )
    expect_error(
        lambda: a.change_email(token, "not-an-email", ("", ""), password), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR"
    )
    expect_error(
        lambda: a.change_email(token, new_email, ("", ""), password), CODE.INVALID_ARGUMENT, "CAPTCHA_REQUIRED"
    )
    proof = a.code("email", new_email)
    expect_error(
        lambda: a.change_email(token, new_email, proof, "Wrong-password-1"), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS"
    )
    expect_error(lambda: a.change_email(token, new_email, proof, ""), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR")
    elsewhere = a.code("email", f"other.{uuid.uuid4().hex[:8]}@example.org")
    expect_error(
        lambda: a.change_email(token, new_email, elsewhere, password), CODE.INVALID_ARGUMENT, "CAPTCHA_INVALID"
    )
    # Bob's address, proven (the test reads every outbox): taken, and the answer names nobody.
    info = expect_error(
        lambda: a.change_email(token, bob["email"], a.code("email", bob["email"]), password),
        CODE.ALREADY_EXISTS,
        "USER_EXISTS",
    )
    assert bob["username"] not in str(info) and "bob" not in str(info.metadata)

    notices_before = len(cluster.outbox.messages(alice["email"]))
    assert a.change_email(token, new_email, proof, password).success
    expect_error(lambda: a.change_email(token, new_email, proof, password), CODE.INVALID_ARGUMENT, "CAPTCHA_EXPIRED")
    assert cluster.outbox.wait_new(alice["email"], notices_before).startswith("notice: ")
    assert b.profile(token).email_masked.endswith("@example.org")
    assert b.login(new_email, password).access_token
    expect_error(lambda: b.login(alice["email"], password), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")

    new_phone = "+8613" + f"{uuid.uuid4().int % 10**9:09d}"
    expect_error(lambda: a.change_phone(token, "12345", ("", ""), password), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR")
    expect_error(
        lambda: a.change_phone(token, new_phone, ("", ""), password), CODE.INVALID_ARGUMENT, "CAPTCHA_REQUIRED"
    )
    sms = a.code("sms", new_phone)
    sms_elsewhere = a.code("sms", "+8613" + f"{uuid.uuid4().int % 10**9:09d}")
    expect_error(
        lambda: a.change_phone(token, new_phone, sms_elsewhere, password), CODE.INVALID_ARGUMENT, "CAPTCHA_INVALID"
    )
    expect_error(
        lambda: a.change_phone(token, new_phone, sms, "Wrong-password-1"), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS"
    )
    expect_error(
        lambda: a.change_phone(token, bob["phone"], a.code("sms", bob["phone"]), password),
        CODE.ALREADY_EXISTS,
        "USER_EXISTS",
    )
    phone_notices = len(cluster.outbox.messages(alice["phone"]))
    assert a.change_phone(token, new_phone, sms, password).success
    assert cluster.outbox.wait_new(alice["phone"], phone_notices).startswith("notice: ")
    assert b.profile(token).phone_masked.endswith(new_phone[-4:])
    login_code = a.code("sms", new_phone)
    by_phone = b.stub.Login(
        auth_pb2.LoginRequest(
            username=new_phone, password=password, captcha_id=login_code[0], captcha_code=login_code[1]
        ),
        timeout=CALL_TIMEOUT,
    )
    assert by_phone.access_token
    # The old addresses are free again for someone who proves them.
    carol = {**unique_account("chgc"), "email": alice["email"], "phone": alice["phone"]}
    a.register(carol)

    uid = user_id(cluster.database_url, alice["username"])
    events = {
        r["event"] for r in query(cluster.database_url, "SELECT event FROM audit_events WHERE subject = $1", str(uid))
    }
    assert {"account.email_change", "account.phone_change"} <= events


# ---------------------------------------------------------------------------------------------------
# 5. DeleteAccount


def pg_dump(database_url: str) -> str:
    done = subprocess.run(["pg_dump", "--no-owner", database_url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE public.users" in done.stdout
    return done.stdout


def test_delete_account_erases_pii_and_blocks_reuse(cluster: Cluster, clients: tuple[Client, Client]) -> None:
    a, b = clients
    carol, dave = unique_account("del"), unique_account("deld")
    a.register(carol)
    a.register(dave)
    here, there = a.login(carol["email"], carol["password"]), b.login(carol["email"], carol["password"])
    enrollment = a.stub.BeginTotpEnrollment(
        auth_pb2.BeginTotpEnrollmentRequest(password=carol["password"]), metadata=auth(here.access_token), timeout=30
    )
    uid = user_id(cluster.database_url, carol["username"])
    before = pg_dump(cluster.database_url)
    assert carol["username"] in before  # the dump shows what it would leak

    expect_error(
        lambda: a.stub.DeleteAccount(auth_pb2.DeleteAccountRequest(password="x"), timeout=CALL_TIMEOUT),
        CODE.UNAUTHENTICATED,
        "TOKEN_MISSING",
    )
    expect_error(lambda: a.delete(here.access_token, ""), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR")
    expect_error(lambda: a.delete(here.access_token, "Wrong-password-1"), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    expect_error(
        lambda: a.delete(here.access_token, carol["password"], dave["username"]),
        CODE.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )

    assert a.delete(here.access_token, carol["password"]).success
    for token in (here.access_token, there.access_token):
        expect_error(lambda token=token: b.profile(token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    expect_error(lambda: b.refresh(there.refresh_token), CODE.UNAUTHENTICATED, "TOKEN_INVALID")
    expect_error(lambda: b.login(carol["email"], carol["password"]), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    # Within the grace period the username and the addresses stay taken.
    for taken in (
        {**unique_account("delx"), "username": carol["username"]},
        {**unique_account("dely"), "email": carol["email"]},
        {**unique_account("delz"), "phone": carol["phone"]},
    ):
        expect_error(lambda taken=taken: a.register(taken), CODE.ALREADY_EXISTS, "USER_EXISTS")
    # A reset for the deleted address answers as for any address, and sends nothing.
    seen = len(cluster.outbox.messages(carol["email"]))
    assert RESET_ID.fullmatch(a.request_reset(carol["email"]).reset_id)
    time.sleep(1)
    assert len(cluster.outbox.messages(carol["email"])) == seen

    dump = pg_dump(cluster.database_url)
    local_part = carol["email"].split("@")[0]
    for name, value in {
        "username": carol["username"],
        "email": carol["email"],
        "email local part": local_part,
        "phone": carol["phone"],
        "phone digits": carol["phone"].lstrip("+"),
        "totp secret": enrollment.secret,
    }.items():
        assert value.lower() not in dump.lower(), f"{name} is still in the database"
    row = query(
        cluster.database_url,
        "SELECT email_encrypted, phone_encrypted, name_encrypted, totp_secret_encrypted, deleted_at"
        " FROM users WHERE id = $1",
        uid,
    )[0]
    assert row["deleted_at"] is not None
    assert (row["email_encrypted"], row["phone_encrypted"], row["name_encrypted"], row["totp_secret_encrypted"]) == (
        None,
        None,
        None,
        None,
    )
    audit = query(cluster.database_url, "SELECT event, details FROM audit_events WHERE subject = $1", str(uid))
    assert "account.delete" in {r["event"] for r in audit}
    assert all("client" not in json.loads(r["details"]) for r in audit)
    assert (
        query(cluster.database_url, "SELECT count(*) AS n FROM refresh_token_families WHERE user_id = $1", uid)[0]["n"]
        == 0
    )

    # An auth.admin credential deletes without the password; anything less may not.
    dave_session = b.login(dave["email"], dave["password"])
    admin = stored_credential(cluster.database_url, "auth.admin")
    introspector = stored_credential(cluster.database_url, "auth.introspect")
    expect_error(lambda: a.delete(introspector, "", dave["username"]), CODE.PERMISSION_DENIED, "PERMISSION_DENIED")
    expect_error(lambda: a.delete(admin), CODE.PERMISSION_DENIED, "PERMISSION_DENIED")
    expect_error(lambda: a.delete(admin, "", "nobody_" + uuid.uuid4().hex[:6]), CODE.NOT_FOUND, "USER_NOT_FOUND")
    expect_error(lambda: a.delete(admin, "", carol["username"]), CODE.NOT_FOUND, "USER_NOT_FOUND")
    assert a.delete(admin, "", dave["username"]).success
    expect_error(lambda: b.profile(dave_session.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
    assert dave["email"].lower() not in pg_dump(cluster.database_url).lower()
    deleted_by = query(
        cluster.database_url,
        "SELECT details FROM audit_events WHERE event = 'account.delete' AND subject = $1",
        str(user_id_of_deleted(cluster.database_url, dave_session.access_token)),
    )
    assert [json.loads(r["details"])["by"] for r in deleted_by] == ["admin"]


def user_id_of_deleted(database_url: str, access_token: str) -> int:
    """The ``sub`` of a token (the deleted account has no username left to look it up by)."""
    payload = access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["sub"])


def test_account_rpcs_have_http_routes(cluster: Cluster) -> None:
    """Each lifecycle RPC answers at its route (here: with the documented reason for a missing token)."""
    port = cluster.servers[0].http_port
    for method, path in (
        ("POST", "/api/v1/auth/password/change"),
        ("GET", "/api/v1/auth/sessions"),
        ("POST", "/api/v1/auth/sessions/revoke"),
        ("POST", "/api/v1/auth/sessions/revoke-others"),
        ("POST", "/api/v1/auth/email/change"),
        ("POST", "/api/v1/auth/phone/change"),
        ("POST", "/api/v1/auth/account/delete"),
    ):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", data=b"{}" if method == "POST" else None, method=method, headers=JSON
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=CALL_TIMEOUT)
        assert caught.value.code == 401
        assert json.load(caught.value)["reason"] == "TOKEN_MISSING"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/auth/password/reset/confirm",
        data=b'{"resetId": "", "code": ""}',
        method="POST",
        headers=JSON,
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=CALL_TIMEOUT)
    assert caught.value.code == 400 and json.load(caught.value)["reason"] == "CAPTCHA_REQUIRED"
    reset = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/auth/password/reset",
        data=json.dumps({"target": f"http.{uuid.uuid4().hex[:6]}@example.com"}).encode(),
        method="POST",
        headers=JSON,
    )
    with urllib.request.urlopen(reset, timeout=CALL_TIMEOUT) as response:
        assert RESET_ID.fullmatch(json.load(response)["resetId"])
