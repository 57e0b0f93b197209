"""The client address behind reverse proxies: forwarded claims count only from trusted networks."""

from __future__ import annotations

import pytest

from internal.conf.config import ConfigError, load_config
from internal.server.peer import TrustedProxies

PROXIES = TrustedProxies(["10.0.0.0/8", "127.0.0.1/32", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("peer", "metadata", "client"),
    [
        # No proxy configured or an untrusted peer: the socket peer, whatever it claims.
        ("ipv4:203.0.113.5:4000", [("x-forwarded-for", "198.51.100.1")], "203.0.113.5"),
        ("ipv6:[2001:db8::5]:4000", [("forwarded", "for=198.51.100.1")], "2001:db8::5"),
        # A trusted peer: the rightmost untrusted hop of X-Forwarded-For.
        ("ipv4:10.1.2.3:4000", [("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.0.0.7")], "203.0.113.9"),
        ("ipv4:127.0.0.1:4000", [("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "10.9.9.9")], "198.51.100.1"),
        # Every hop trusted: the leftmost one.
        ("ipv4:10.1.2.3:4000", [("x-forwarded-for", "10.0.0.1, 10.0.0.2")], "10.0.0.1"),
        # Nothing forwarded: the trusted peer itself.
        ("ipv4:10.1.2.3:4000", [], "10.1.2.3"),
        # Forwarded (RFC 7239) wins over X-Forwarded-For, with ports, brackets and quotes.
        (
            "ipv4:10.1.2.3:4000",
            [("forwarded", 'for="[2001:db8::9]:4711";proto=https, for=10.0.0.2'), ("x-forwarded-for", "198.51.100.1")],
            "2001:db8::9",
        ),
        ("ipv4:10.1.2.3:4000", [("forwarded", "for=192.0.2.60:8080;by=10.0.0.1")], "192.0.2.60"),
        # A hop that is not an address ends the walk at the last one that could be vouched for.
        ("ipv4:10.1.2.3:4000", [("x-forwarded-for", "198.51.100.1, unknown, 10.0.0.4")], "10.0.0.4"),
        ("ipv4:10.1.2.3:4000", [("forwarded", "for=_hidden")], "10.1.2.3"),
        # IPv4 clients on an IPv6 socket, and IPv6 proxies.
        ("ipv6:[::ffff:10.1.2.3]:4000", [("x-forwarded-for", "198.51.100.2")], "198.51.100.2"),
        ("ipv6:[2001:db8:ffff::1]:4000", [("x-forwarded-for", "2001:db8:1::1")], "2001:db8:1::1"),
        # Binary metadata is never a claim.
        ("ipv4:10.1.2.3:4000", [("x-forwarded-for", b"198.51.100.1")], "10.1.2.3"),
        ("unix:/run/authkms.sock", [("x-forwarded-for", "198.51.100.1")], "unix:/run/authkms.sock"),
    ],
)
def test_client_address(peer: str, metadata: list[tuple[str, str | bytes]], client: str) -> None:
    assert PROXIES.client_address(peer, metadata) == client


def test_no_trusted_proxies_by_default() -> None:
    assert TrustedProxies().client_address("ipv4:127.0.0.1:1", [("x-forwarded-for", "198.51.100.1")]) == "127.0.0.1"
    assert load_config(environ={}).server.trusted_proxies == []


def test_configured_from_the_environment_and_validated() -> None:
    config = load_config(environ={"APP__SERVER__TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::/32"})
    assert config.server.trusted_proxies == ["10.0.0.0/8", "2001:db8::/32"]
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies"):
        load_config(environ={"APP__SERVER__TRUSTED_PROXIES": "10.0.0.0/8,localhost"})
