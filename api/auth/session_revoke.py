"""`POST /v1/auth/session/revoke` (design §8 "Access wire"): a session revokes itself, or every
session of its account.

Body: empty (= `{"all": false}`) or `{"all": true|false}`. `all: false` revokes the calling session
(its `jti`); `all: true` revokes every session of the caller's account issued before now, the caller's
own included. One `SessionRevoked` record; the answer (`{"revoked": n}`, n = unexpired sessions it
revoked) is sent once the `sessions` read model has applied it, so from then on every session check
(api/auth/bearer.py) refuses those sessions, across restarts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import msgspec

from ledger.aggregates import stream_id
from ledger.app import Ledger
from ledger.events import SessionRevoked
from ledger.services.refusals import Refusal
from projections.runner import ProjectionRunner
from projections.sessions import revoked_by

from .session_jwt import SessionClaims

STREAM_KIND = "session-revocation"
PROJECTION_WAIT_S = 5.0


class RevokeBody(msgspec.Struct, forbid_unknown_fields=True):
    all: bool = False


def parse_body(raw: bytes) -> bool:
    """`all` from the body; an empty body means this session only."""
    if not raw.strip():
        return False
    try:
        return msgspec.json.decode(raw, type=RevokeBody).all
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Refusal("bad_request", f"want an empty body or {{\"all\": true|false}}: {str(exc)[:200]}") from None


async def revoke(ledger: Ledger, projections: ProjectionRunner, claims: SessionClaims, *, revoke_all: bool,
                 clock: Callable[[], float] = time.time) -> int:
    now = int(clock())
    event = SessionRevoked(omni_account=claims.omni_account, jti=None if revoke_all else claims.jti,
                           not_before=now if revoke_all else None)
    [record] = await ledger.append_async(stream_id(STREAM_KIND, uuid.uuid4().hex), 0, [event])
    if not await projections.wait_until_async(record.seq, timeout=PROJECTION_WAIT_S, name="sessions"):
        raise Refusal("contended", f"the revocation is recorded (seq {record.seq}) but not enforced yet; "
                      "it will be within seconds")
    return revoked_by(projections.engine, record.seq, live_at=now)
