"""`JwksCache` (api/oauth2_google.py): TTL, refresh on an unknown kid with one refresh in flight,
last good keys kept. A unit test of one module: the fetch function is a fake."""

from __future__ import annotations

import threading
import time

import pytest

from api.oauth2_google import JwksCache
from ledger.ports import IdentityProviderError


def doc(*kids: str, kty: str = "RSA") -> dict:
    return {"keys": [{"kty": kty, "kid": k, "n": "x", "e": "AQAB"} for k in kids]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_cached_for_the_ttl_then_refetched() -> None:
    clock, calls = Clock(), []
    cache = JwksCache(lambda: calls.append(1) or doc("a"), ttl_s=60, clock=clock)
    assert cache.key("a") is not None and cache.key("a") is not None
    assert len(calls) == 1
    clock.now += 61
    cache.key("a")
    assert len(calls) == 2


def test_unknown_kid_refreshes_once_per_interval() -> None:
    clock, docs = Clock(), [doc("a"), doc("a", "b")]
    cache = JwksCache(lambda: docs.pop(0) if len(docs) > 1 else docs[0], ttl_s=3600, clock=clock,
                      min_refresh_interval_s=10)
    cache.key("a")
    assert cache.key("b") is not None  # rotation: fetched at once
    fetches = cache.fetches
    assert cache.key("forged-0") is None  # within the interval of the rotation refresh: no fetch
    assert cache.fetches == fetches
    clock.now += 11
    assert cache.key("forged-1") is None and cache.key("forged-2") is None
    assert cache.fetches == fetches + 1  # a herd of forged kids costs one fetch per interval


def test_failed_refresh_keeps_the_last_good_keys() -> None:
    clock = Clock()
    state = {"fail": False}

    def fetch() -> dict:
        if state["fail"]:
            raise OSError("provider down")
        return doc("a")

    cache = JwksCache(fetch, ttl_s=60, clock=clock)
    assert cache.key("a") is not None
    state["fail"] = True
    clock.now += 120
    assert cache.key("a") is not None
    assert cache.ready()


def test_no_keys_at_all_is_a_provider_error() -> None:
    cache = JwksCache(lambda: (_ for _ in ()).throw(OSError("down")), ttl_s=60, clock=Clock())
    with pytest.raises(IdentityProviderError):
        cache.key("a")
    assert not cache.ready()


def test_non_rsa_keys_are_ignored_fail_closed() -> None:
    cache = JwksCache(lambda: {"keys": [{"kid": "a", "n": "x", "e": "AQAB"}, {"kty": "EC", "kid": "b"},
                                        {"kty": "RSA", "kid": "c", "use": "enc"}, {"kty": "RSA", "kid": "d"}]},
                      ttl_s=60, clock=Clock())
    assert cache.key("d") is not None
    assert cache.key("a") is None and cache.key("b") is None and cache.key("c") is None


def test_concurrent_unknown_kid_lookups_share_one_refresh() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def slow_fetch() -> dict:
        calls.append(1)
        if len(calls) > 1:
            gate.wait(5)
        return doc("a", "b") if len(calls) > 1 else doc("a")

    cache = JwksCache(slow_fetch, ttl_s=3600, min_refresh_interval_s=0.0)
    cache.key("a")
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.key("b"))) for _ in range(10)]
    for t in threads:
        t.start()
    while len(calls) < 2:
        time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 2  # one initial fetch, one refresh for all ten callers
    assert all(r is not None for r in results)
