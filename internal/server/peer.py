"""Who the client is when the service sits behind reverse proxies: the one rule for HTTP and gRPC.

A ``Forwarded`` (RFC 7239) or ``X-Forwarded-For`` header (HTTP) or metadata entry (gRPC) is only a claim, so it
is believed only from a peer inside ``server.trusted_proxies``. The list is read right to left, because each
proxy appends the address it saw: every trusted hop is skipped and the first untrusted address is the client.
When every listed hop is trusted the leftmost one is. An entry that is not an IP address ends the walk, and
the last address that could be vouched for counts. ``Forwarded`` wins over ``X-Forwarded-For`` when both come.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from internal.service.metadata import peer_host

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FORWARDED_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)


def _address(text: str) -> Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: "[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # Forwarded: "192.0.2.60:4711"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def _forwarded_hops(header: str) -> list[str]:
    return [match.group(1) for element in header.split(",") if (match := _FORWARDED_FOR.search(element))]


class TrustedProxies:
    """``server.trusted_proxies`` as networks, and the client address they let a request claim."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def client_address(self, peer: str, metadata: Sequence[tuple[str, str | bytes]]) -> str:
        """The client's IP address: the socket peer's, or one its trusted proxies forwarded."""
        host = peer_host(peer)
        address = _address(host)
        if address is None or not self._networks or not self._trusted(address):
            return str(address) if address is not None else host
        forwarded = [v for k, v in metadata if k == "forwarded" and isinstance(v, str)]
        if forwarded:
            hops = [hop for value in forwarded for hop in _forwarded_hops(value)]
        else:
            hops = [h for k, v in metadata if k == "x-forwarded-for" and isinstance(v, str) for h in v.split(",")]
        client = address
        for hop in reversed(hops):
            claimed = _address(hop)
            if claimed is None:
                break
            client = claimed
            if not self._trusted(claimed):
                break
        return str(client)
