"""The client's error table (api/client.py `_error`): each broker answer a daemon branches on maps
to one typed exception whose text says what to do. The answers that a live broker cannot be made to
give on demand here (anchors down, STS down) come from an in-test transport; the rest are covered
against a real broker in tests/integration/test_client.py."""

from __future__ import annotations

import httpx
import pytest
from eth_account import Account

from api.client import (
    AccessDenied,
    AnchorUnavailable,
    BadRequest,
    BrokerClient,
    BrokerUnavailable,
    BrokerUnreachable,
    RequestReplayed,
)


def _client(status: int, body: dict, headers: dict | None = None) -> BrokerClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers or {})

    return BrokerClient("http://broker.test", Account.create(), transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status,body,headers,kind,retry_after,words", [
    (503, {"error": "anchor_unavailable", "message": "audit anchors evm did not confirm", "reason": "anchor_deadline"},
     {"Retry-After": "7"}, AnchorUnavailable, 7.0, "retry in 7 s"),
    (503, {"error": "anchor_unavailable", "message": "x", "reason": "anchor_unready"}, {}, AnchorUnavailable, 5.0,
     "nothing was released"),
    (502, {"error": "sts_error", "message": "sts error: AccessDenied"}, {}, BrokerUnavailable, 10.0, "retry in 10 s"),
    (403, {"error": "forbidden", "message": "forbidden", "reason": "scope_not_owned"}, {}, AccessDenied, None,
     "own namespace"),
    (403, {"error": "forbidden", "message": "forbidden", "reason": "daemon_bound_elsewhere"}, {}, AccessDenied, None,
     "another master"),
    (409, {"error": "conflict", "message": "conflict", "reason": "request_replayed"}, {}, RequestReplayed, None,
     "new request id"),
    (400, {"error": "bad_request", "message": "bad", "reason": "unknown_service"}, {}, BadRequest, None, "catalogue"),
])
def test_each_refusal_maps_to_a_typed_error_that_says_what_to_do(status, body, headers, kind, retry_after,
                                                                  words) -> None:
    client = _client(status, body, headers)
    with pytest.raises(kind) as err:
        client.audit_head()
    assert err.value.status == status and err.value.reason == body.get("reason")
    assert err.value.retry_after == retry_after
    assert words in str(err.value)
    assert err.value.temporary == (retry_after is not None)


def test_an_unreachable_broker_is_temporary() -> None:
    client = BrokerClient("http://127.0.0.1:9", Account.create(), timeout=2)
    with pytest.raises(BrokerUnreachable) as err:
        client.audit_head()
    assert err.value.temporary and "curl" in str(err.value)


def test_a_non_json_error_page_is_still_typed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    client = BrokerClient("http://broker.test", Account.create(), transport=httpx.MockTransport(handler))
    with pytest.raises(BrokerUnavailable) as err:
        client.audit_head()
    assert "Bad Gateway" in str(err.value)
