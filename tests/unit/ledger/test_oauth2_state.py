"""The signed OAuth2 `state` (ledger/services/oauth2.py `StateCodec`)."""

from __future__ import annotations

import base64
import json

import pytest

from ledger.services.oauth2 import StateCodec, b64url
from ledger.services.signin_requests import SignInRefused

KEY = b"k" * 32


def test_round_trip_and_derived_secrets() -> None:
    codec = StateCodec(KEY)
    state = codec.encode("oa2-abc", 1000)
    assert codec.decode(state, 1000) == ("oa2-abc", codec.nonce("oa2-abc"))
    assert codec.verifier("oa2-abc") != codec.verifier("oa2-abd")
    assert StateCodec(b"x" * 32).verifier("oa2-abc") != codec.verifier("oa2-abc")


@pytest.mark.parametrize("mutate", [
    lambda s: "invalid",
    lambda s: s + "x",
    lambda s: s.split(".")[0],
    lambda s: s.split(".")[0] + "." + b64url(b"\x00" * 32),
])
def test_tampered_state_is_refused(mutate) -> None:  # noqa: ANN001
    codec = StateCodec(KEY)
    with pytest.raises(SignInRefused) as info:
        codec.decode(mutate(codec.encode("oa2-abc", 1000)), 1000)
    assert info.value.reason == "state_invalid"


def test_state_signed_with_another_key_is_refused() -> None:
    with pytest.raises(SignInRefused):
        StateCodec(KEY).decode(StateCodec(b"o" * 32).encode("oa2-abc", 1000), 1000)


def test_state_with_a_swapped_request_id_is_refused() -> None:
    codec = StateCodec(KEY)
    payload, sig = codec.encode("oa2-abc", 1000).split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=="))
    data["rid"] = "oa2-victim"
    forged = b64url(json.dumps(data).encode()) + "." + sig
    with pytest.raises(SignInRefused):
        codec.decode(forged, 1000)


def test_non_canonical_signature_spelling_is_refused() -> None:
    codec = StateCodec(KEY)
    state = codec.encode("oa2-abc", 1000)
    last = state[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]  # differs only in a bit the decoder ignores
    with pytest.raises(SignInRefused):
        codec.decode(state[:-1] + twin, 1000)


def test_state_older_than_the_ttl_is_expired() -> None:
    codec = StateCodec(KEY)
    state = codec.encode("oa2-abc", 1000)
    assert codec.decode(state, 1600)
    with pytest.raises(SignInRefused) as info:
        codec.decode(state, 1601)
    assert info.value.reason == "state_expired"


def test_wrong_version_is_refused() -> None:
    codec = StateCodec(KEY)
    payload = b64url(json.dumps({"v": 2, "rid": "oa2-abc", "n": codec.nonce("oa2-abc"), "ts": 1000}).encode())
    forged = payload + "." + b64url(codec._mac(b"state", payload.encode()))
    with pytest.raises(SignInRefused):
        codec.decode(forged, 1000)
