"""EIP-191 signature parsing and recovery (seed-spec §B.4 step 4): every refusal, attack-named."""

from __future__ import annotations

from typing import get_args

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from ledger.events import AuthFailureReason
from ledger.signatures import (
    SECP256K1_N,
    Signature,
    SignatureError,
    parse_signature,
    recover_personal_sign,
    verify_personal_sign,
)

KEY = "0x" + "11" * 32
ACCOUNT = Account.from_key(KEY)
ADDRESS = ACCOUNT.address.lower()
SECP256K1_P = 2**256 - 2**32 - 977
MESSAGE = "agentkeys test message"


def _sign(message: str | bytes, key: str = KEY) -> bytes:
    signable = encode_defunct(text=message) if isinstance(message, str) else encode_defunct(primitive=message)
    return bytes(Account.sign_message(signable, key).signature)


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def _sig(r: int, s: int, v: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])


def _refusal(hex_str: object) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        parse_signature(hex_str)  # type: ignore[arg-type]
    return info.value


# --- happy path ---------------------------------------------------------------------------------

def test_known_vector_recovers_the_published_address() -> None:
    # eth-account's documented vector for personal_sign("I♥SF").
    sig = "0xe6ca9bba58c88611fad66a6ce8f996908195593807c4b38bd528d2cff09d4eb3" \
          "3e5bfbbf4d3e39b1a2fd816a7680c19ebebaf3a141b239934ad43cb33fcec8ce1c"
    assert recover_personal_sign("I♥SF", parse_signature(sig)) == "0x5ce9454909639d2d17a3f753ce7d93fa0b9ab12e"


def test_own_signature_recovers_lowercase_address() -> None:
    raw = _sign(MESSAGE)
    parsed = parse_signature(_hex(raw))
    assert parsed.raw65 == raw and parsed.v in (0, 1)
    assert recover_personal_sign(MESSAGE, parsed) == ADDRESS
    assert recover_personal_sign(MESSAGE.encode(), parsed) == ADDRESS


def test_0x_prefix_is_optional_and_hex_case_is_free() -> None:
    raw = _sign(MESSAGE)
    assert parse_signature(raw.hex()) == parse_signature(_hex(raw)) == parse_signature("0x" + raw.hex().upper())


def test_bytes_message_recovers_over_the_exact_bytes() -> None:
    payload = b'{"a":1,"\xc3\xa9":"x"}'
    assert recover_personal_sign(payload, parse_signature(_hex(_sign(payload)))) == ADDRESS


def test_v_27_and_v_0_equivalent() -> None:
    raw = _sign(MESSAGE)
    assert raw[64] in (27, 28)
    as_01 = raw[:64] + bytes([raw[64] - 27])
    a, b = parse_signature(_hex(raw)), parse_signature(_hex(as_01))
    assert (a.r, a.s, a.v) == (b.r, b.s, b.v)
    assert recover_personal_sign(MESSAGE, a) == recover_personal_sign(MESSAGE, b) == ADDRESS


def test_signature_round_trips_to_hex() -> None:
    raw = _sign(MESSAGE)
    assert parse_signature(_hex(raw)).to_hex() == _hex(raw)


def test_verify_personal_sign_compares_case_insensitively() -> None:
    raw = _sign(MESSAGE)
    assert verify_personal_sign(MESSAGE, _hex(raw), ACCOUNT.address) == ADDRESS


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    "0x" + "zz" * 65,
    "0x" + "ab" * 64 + "a",        # odd length
    "0x" + "ab" * 32 + " " + "ab" * 33,  # whitespace bytes.fromhex would accept
    "0X" + "ab" * 65,               # only a lowercase 0x prefix is stripped
    "0x0x" + "ab" * 65,
    "ab" * 64 + "\u0661\u0661",     # non-ASCII digits
    None,
    b"\x00" * 65,
])
def test_non_hex_signature_rejected(bad: object) -> None:
    err = _refusal(bad)
    assert (err.reason, err.status, str(err)) == ("signature_not_hex", 400, "signature is not hex")


def test_64_byte_signature_rejected() -> None:
    raw = _sign(MESSAGE)[:64]  # EIP-2098 compact form is not accepted
    err = _refusal(_hex(raw))
    assert (err.reason, err.status, str(err)) == ("signature_length", 400, "signature must be 65 bytes, got 64")


@pytest.mark.parametrize("n", [0, 1, 66, 130])
def test_wrong_length_signature_rejected(n: int) -> None:
    err = _refusal("0x" + "01" * n)
    assert (err.reason, str(err)) == ("signature_length", f"signature must be 65 bytes, got {n}")


@pytest.mark.parametrize("v", [2, 26, 29, 35, 36, 37, 255])
def test_unsupported_v_rejected(v: int) -> None:
    err = _refusal(_hex(_sign(MESSAGE)[:64] + bytes([v])))
    assert (err.reason, err.status, str(err)) == ("signature_v", 400, f"unsupported v byte: {v}")


def test_v_29_rejected() -> None:
    err = _refusal(_hex(_sign(MESSAGE)[:64] + bytes([29])))
    assert err.reason == "signature_v" and str(err) == "unsupported v byte: 29"


def test_eip155_v_is_rejected_even_though_eth_account_would_accept_it() -> None:
    raw = _sign(MESSAGE)
    v155 = (raw[64] - 27) + 35 + 2 * 0  # chain id 0 encoding; eth-account's extract_chain_id accepts it
    assert Account.recover_message(encode_defunct(text=MESSAGE), signature=raw[:64] + bytes([v155])).lower() == ADDRESS
    assert _refusal(_hex(raw[:64] + bytes([v155]))).reason == "signature_v"


def test_zero_signature_rejected() -> None:
    err = _refusal("0x" + "00" * 64 + "1b")
    assert (err.reason, err.status, str(err)) == ("signature_zero", 400, "bad sig bytes")


@pytest.mark.parametrize(("r", "s"), [(0, 1), (1, 0), (SECP256K1_N, 1), (1, SECP256K1_N), (2**256 - 1, 1)])
def test_zero_or_out_of_range_r_s_rejected(r: int, s: int) -> None:
    err = _refusal(_hex(_sig(r, s, 27)))
    assert (err.reason, err.status) == ("signature_zero", 400)


def test_high_s_malleable_signature_is_rejected() -> None:
    raw = _sign(MESSAGE)
    good = parse_signature(_hex(raw))
    twin = _sig(good.r, SECP256K1_N - good.s, 27 + (1 - good.v))
    # The twin is a real attack: the library alone recovers the same wallet from it.
    assert Account.recover_message(encode_defunct(text=MESSAGE), signature=twin).lower() == ADDRESS
    err = _refusal(_hex(twin))
    assert (err.reason, err.status) == ("signature_high_s", 401)
    assert err.kind == "unauthorized"


def test_s_exactly_half_n_is_low_and_half_n_plus_one_is_high() -> None:
    half = SECP256K1_N // 2
    assert parse_signature(_hex(_sig(1, half, 27))).s == half
    assert _refusal(_hex(_sig(1, half + 1, 27))).reason == "signature_high_s"


def _r_without_curve_point() -> int:
    r = 1
    while pow((r**3 + 7) % SECP256K1_P, (SECP256K1_P - 1) // 2, SECP256K1_P) != SECP256K1_P - 1:
        r += 1
    return r


def test_unrecoverable_signature_is_401() -> None:
    sig = parse_signature(_hex(_sig(_r_without_curve_point(), 1, 27)))
    with pytest.raises(SignatureError) as info:
        recover_personal_sign(MESSAGE, sig)
    assert (info.value.reason, info.value.status) == ("signature_unrecoverable", 401)


def test_signature_by_another_key_is_address_mismatch() -> None:
    other = _sign(MESSAGE, "0x" + "22" * 32)
    with pytest.raises(SignatureError) as info:
        verify_personal_sign(MESSAGE, _hex(other), ADDRESS, label="per-call signature")
    recovered = Account.from_key("0x" + "22" * 32).address.lower()
    assert (info.value.reason, info.value.status) == ("address_mismatch", 401)
    assert str(info.value) == f"per-call signature recovers to {recovered} not {ADDRESS}"


def test_signature_over_other_bytes_does_not_recover_the_wallet() -> None:
    sig = parse_signature(_hex(_sign(MESSAGE)))
    assert recover_personal_sign(MESSAGE + " ", sig) != ADDRESS


def test_parse_errors_precede_in_the_seeds_order() -> None:
    # length is checked before v, v before r/s, r/s range before high-s
    assert _refusal("0x" + "00" * 64).reason == "signature_length"
    assert _refusal("0x" + "00" * 64 + "05").reason == "signature_v"
    assert _refusal(_hex(_sig(0, SECP256K1_N - 1, 27))).reason == "signature_zero"


def test_every_reason_is_a_ledger_auth_failure_reason() -> None:
    reasons = set(get_args(AuthFailureReason))
    for reason in ("signature_not_hex", "signature_length", "signature_v", "signature_zero",
                   "signature_high_s", "signature_unrecoverable", "address_mismatch"):
        assert reason in reasons
        assert SignatureError(reason, "x").status in (400, 401)
    with pytest.raises(ValueError):
        SignatureError("not_a_reason", "x")


def test_signature_dataclass_is_frozen() -> None:
    sig = parse_signature(_hex(_sign(MESSAGE)))
    assert isinstance(sig, Signature)
    with pytest.raises(AttributeError):
        sig.v = 1  # type: ignore[misc]
