"""The client IP used for per-IP rate limits, resistant to `X-Forwarded-For` spoofing.

Rule: the socket peer is the client, unless the peer is a trusted proxy (`BROKER_TRUSTED_PROXIES`).
Then walk `X-Forwarded-For` from the right (the entry appended by the proxy nearest to us) and take
the first entry that is not itself a trusted proxy. Entries to the left of it were written by the
client and are never believed. Malformed entries are skipped; if no usable entry remains the peer is
used. Several `X-Forwarded-For` header lines are read as one comma list (RFC 9110 §5.3) when the
headers object offers `getall` (Litestar's `Headers` does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN_CLIENT = "unknown"
_XFF = "x-forwarded-for"


def parse_trusted_proxies(raw: str) -> list[IPNetwork]:
    """`"10.0.0.0/8, 127.0.0.1"` -> networks (a bare address is a /32 or /128). Empty -> []. Garbage
    raises ValueError naming the entry (the caller turns it into BOOT_FAIL). Host bits in a network
    (`10.0.0.1/8`) are masked, as `api.config` does."""
    if not isinstance(raw, str):
        raise ValueError("trusted proxies must be a string")
    nets: list[IPNetwork] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or network") from None
    return nets


def _parse_ip(text: str) -> IPAddress | None:
    """An address from a peer host or XFF entry: `1.2.3.4`, `1.2.3.4:port`, `::1`, `[::1]`,
    `[::1]:port`; IPv4-mapped IPv6 becomes IPv4. IPv6 zone ids are not accepted. Else None."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port
        host, port = text.split(":")
        if not port.isdigit():
            return None
        text = host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client: one client, one key
    return ip


def _trusted(ip: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def _forwarded_for(headers: Mapping[str, str] | Any) -> list[str]:
    values: list[str] = []
    getall = getattr(headers, "getall", None)
    if callable(getall):
        try:
            values = [v for v in getall(_XFF, []) if isinstance(v, str)]
        except (KeyError, TypeError):
            values = []
    if not values:
        for name, value in headers.items():
            if isinstance(name, bytes):
                name = name.decode("latin-1")
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(name, str) and name.lower() == _XFF and isinstance(value, str):
                values.append(value)
    entries: list[str] = []
    for value in values:
        entries.extend(value.split(","))
    return entries


def client_ip(peer_host: str | None, headers: Mapping[str, str], trusted_proxies: Sequence[IPNetwork]) -> str:
    """The client address as a string (normalised when it parses as an IP; `::ffff:a.b.c.d` is
    reported as `a.b.c.d`). A peer that is missing
    gives `"unknown"`; a peer that is not an IP (a test client's `"testclient"`) is returned as is
    and, not being a trusted proxy, its headers are ignored."""
    if not peer_host:
        return UNKNOWN_CLIENT
    peer = _parse_ip(peer_host)
    if peer is None:
        return peer_host
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return str(peer)
    for entry in reversed(_forwarded_for(headers)):
        ip = _parse_ip(entry)
        if ip is None:
            continue
        if _trusted(ip, trusted_proxies):
            continue
        return str(ip)
    return str(peer)
