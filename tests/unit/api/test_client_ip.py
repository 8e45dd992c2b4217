"""Client IP for rate limits: `X-Forwarded-For` is believed only from trusted proxies, right to left."""

from __future__ import annotations

import ipaddress

import pytest
from litestar.datastructures import Headers

from api.client_ip import UNKNOWN_CLIENT, client_ip, parse_trusted_proxies

PROXIES = parse_trusted_proxies("10.0.0.0/8, 127.0.0.1, fd00::/8")


def test_parse_trusted_proxies() -> None:
    assert parse_trusted_proxies("10.0.0.0/8, 127.0.0.1") == [
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]
    assert parse_trusted_proxies("") == [] and parse_trusted_proxies(" , ") == []
    assert parse_trusted_proxies("::1,2001:db8::/32") == [
        ipaddress.ip_network("::1/128"), ipaddress.ip_network("2001:db8::/32")]


@pytest.mark.parametrize("raw", ["garbage", "10.0.0.0/33", "10.0.0.0/8, nope", "300.1.1.1", "10.0.0.0/8;127.0.0.1"])
def test_parse_trusted_proxies_refuses_garbage(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_trusted_proxies(raw)


def test_no_proxies_configured_means_the_peer() -> None:
    assert client_ip("203.0.113.7", {"x-forwarded-for": "1.2.3.4"}, []) == "203.0.113.7"


def test_x_forwarded_for_ignored_from_untrusted_peer() -> None:
    # An attacker connecting directly cannot choose the bucket its requests count against.
    assert client_ip("203.0.113.7", {"X-Forwarded-For": "1.2.3.4"}, PROXIES) == "203.0.113.7"


def test_trusted_peer_single_hop() -> None:
    assert client_ip("10.1.2.3", {"X-Forwarded-For": "198.51.100.9"}, PROXIES) == "198.51.100.9"


def test_rightmost_untrusted_hop_is_used() -> None:
    # The client sent "1.2.3.4" itself; the proxy appended the real peer 198.51.100.9.
    headers = {"x-forwarded-for": "1.2.3.4, 198.51.100.9"}
    assert client_ip("10.0.0.1", headers, PROXIES) == "198.51.100.9"


def test_trusted_hops_on_the_right_are_skipped() -> None:
    headers = {"x-forwarded-for": "1.2.3.4, 198.51.100.9, 10.9.9.9, 127.0.0.1"}
    assert client_ip("10.0.0.1", headers, PROXIES) == "198.51.100.9"


def test_malformed_entries_are_ignored() -> None:
    headers = {"x-forwarded-for": "1.2.3.4, 198.51.100.9, not-an-ip, , unknown"}
    assert client_ip("10.0.0.1", headers, PROXIES) == "198.51.100.9"


def test_only_trusted_or_malformed_entries_fall_back_to_the_peer() -> None:
    assert client_ip("10.0.0.1", {"x-forwarded-for": "10.2.2.2, garbage"}, PROXIES) == "10.0.0.1"
    assert client_ip("10.0.0.1", {}, PROXIES) == "10.0.0.1"
    assert client_ip("10.0.0.1", {"x-forwarded-for": ""}, PROXIES) == "10.0.0.1"


def test_ports_and_brackets_are_understood() -> None:
    assert client_ip("10.0.0.1", {"x-forwarded-for": "198.51.100.9:4711"}, PROXIES) == "198.51.100.9"
    assert client_ip("10.0.0.1", {"x-forwarded-for": "[2001:db8::1]:443"}, PROXIES) == "2001:db8::1"
    assert client_ip("10.0.0.1", {"x-forwarded-for": "2001:db8::1"}, PROXIES) == "2001:db8::1"
    assert client_ip("10.0.0.1", {"x-forwarded-for": "[2001:db8::1"}, PROXIES) == "10.0.0.1"
    assert client_ip("10.0.0.1", {"x-forwarded-for": "1.2.3.4:port"}, PROXIES) == "10.0.0.1"


def test_ipv6_peer_and_ipv4_mapped_peer() -> None:
    assert client_ip("fd00::5", {"x-forwarded-for": "2001:db8::9"}, PROXIES) == "2001:db8::9"
    assert client_ip("::ffff:10.0.0.1", {"x-forwarded-for": "198.51.100.9"}, PROXIES) == "198.51.100.9"
    assert client_ip("::ffff:203.0.113.7", {"x-forwarded-for": "198.51.100.9"}, PROXIES) == "203.0.113.7"
    assert client_ip("10.0.0.1", {"x-forwarded-for": "::ffff:198.51.100.9"}, PROXIES) == "198.51.100.9"


def test_addresses_are_normalised() -> None:
    assert client_ip("2001:DB8:0:0::1", {}, PROXIES) == "2001:db8::1"


def test_multiple_header_lines_are_one_list() -> None:
    headers = Headers([(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"198.51.100.9, 10.0.0.2")])
    assert client_ip("10.0.0.1", headers, PROXIES) == "198.51.100.9"


def test_missing_or_non_ip_peer() -> None:
    assert client_ip(None, {"x-forwarded-for": "1.2.3.4"}, PROXIES) == UNKNOWN_CLIENT
    assert client_ip("", {}, PROXIES) == UNKNOWN_CLIENT
    assert client_ip("testclient", {"x-forwarded-for": "1.2.3.4"}, PROXIES) == "testclient"
