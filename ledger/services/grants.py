"""Capability grants (seed-spec §B.10, design §2): a master wallet lets a daemon address mint
credentials for one service under a scope path prefix, until an expiry, at most N times.

create: the service must be in the catalogue (`unknown_service`) and the scope inside a root the
        master owns (`not_enrolled`, `scope_not_owned`; `access.py`); then one atomic append binds the
        daemon (`WalletBound`, role `daemon`, parent = the master, in
        the master's OmniAccount) and writes `GrantCreated` with its signed `audit_proof`. A daemon
        belongs to one master at a time (design §3a): while another master holds a live
        (unexpired, unrevoked) grant naming it, a grant is refused `daemon_bound_elsewhere`. A grant
        may pin the `agent_id` of its mints (exact, or a prefix).
release: `POST /v1/daemon/release` by the daemon itself or its master revokes that master's live
        grants naming the daemon and records `DaemonReleased`, so a squatted address is freed.
revoke: `GrantRevoked` on the grant aggregate; not-found / not-owner / already revoked collapse to
        one refusal (no ownership oracle).
list:   from the `grants` read model, after it has caught up with the caller's own writes.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from ..aggregates import Grant, GrantRefused, WalletBinding, WalletRoleConflict, stream_id
from ..app import Ledger
from ..errors import ConcurrencyConflict
from ..events import DaemonReleased, Event, GrantCreated
from ..identity import normalize_address
from ..ports import Clock, GrantLookup, GrantProofSigner
from .access import Access
from .caller import Caller
from .refusals import Refusal

MAX_USES_LIMIT = 1_000_000
MAX_GRANT_SECONDS = 366 * 24 * 3600
AGENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # design §3a: the STS session tag `agent_id`


def validate_agent_id(value: str, what: str = "agent_id") -> str:
    if not isinstance(value, str) or not AGENT_ID.fullmatch(value):
        raise Refusal("invalid_agent_id", f"{what} must be 1-64 characters of [A-Za-z0-9._:-]")
    return value


def agent_allowed(grant: GrantCreated, agent_id: str) -> bool:
    """A grant without a pin allows every (valid) agent_id."""
    if grant.agent_id is not None:
        return agent_id == grant.agent_id
    if grant.agent_id_prefix is not None:
        return agent_id.startswith(grant.agent_id_prefix)
    return True


def grant_content(event: GrantCreated) -> dict[str, Any]:
    """What `audit_proof` signs: every field but the proof itself, as recorded in `data` (a null
    optional field is omitted there, so it is not part of the signed content either)."""
    return {k: v for k, v in event.to_data().items() if k != "audit_proof"}


def scope_covers(granted: str, requested: str) -> bool:
    """Both normalized. An empty grant scope covers the whole service."""
    return granted == "" or requested.startswith(granted)


class GrantService:
    def __init__(self, *, ledger: Ledger, grants: GrantLookup, proof_signer: GrantProofSigner, access: Access,
                 clock: Clock = time.time) -> None:
        self.access = access
        self.ledger = ledger
        self.grants = grants
        self.proof_signer = proof_signer
        self.clock = clock

    async def create(self, caller: Caller, *, daemon_address: str, service: str, scope_path: str,
                     expires_at: int, max_uses: int, agent_id: str | None = None,
                     agent_id_prefix: str | None = None) -> GrantCreated:
        master = caller.wallet_address
        if not master or caller.identity_type != "evm":
            raise Refusal("not_owner", "only a wallet (SIWE) session can grant")
        try:
            daemon = normalize_address(daemon_address)
        except ValueError as exc:
            raise Refusal("bad_request", f"daemon_address: {exc}") from None
        if daemon == master:
            raise Refusal("bad_request", "a wallet cannot grant itself")
        now = int(self.clock())
        if expires_at <= now:
            raise Refusal("bad_request", "expires_at is in the past")
        if expires_at > now + MAX_GRANT_SECONDS:
            raise Refusal("bad_request", "expires_at is more than 366 days away")
        if not 1 <= max_uses <= MAX_USES_LIMIT:
            raise Refusal("bad_request", f"max_uses must be in [1, {MAX_USES_LIMIT}]")
        if agent_id is not None and agent_id_prefix is not None:
            raise Refusal("bad_request", "agent_id and agent_id_prefix are exclusive")
        if agent_id is not None:
            validate_agent_id(agent_id)
        if agent_id_prefix is not None:
            validate_agent_id(agent_id_prefix, "agent_id_prefix")
        svc = self.access.service(service)  # 400 unknown_service: exact catalogue names only
        scope_path = self.access.scope(svc, scope_path)
        omni = caller.omni_account
        self.access.check_owned(omni, svc, scope_path)  # 403 not_enrolled / scope_not_owned
        if any(row.master_omni_account != omni for row in self.grants.live_for_daemon(daemon, now)):
            raise Refusal("daemon_bound_elsewhere", "this daemon is bound to another master (it may release "
                          "itself: POST /v1/daemon/release)")
        grant_id = "grn-" + secrets.token_hex(12)
        unsigned = GrantCreated(grant_id=grant_id, master_omni_account=omni, master_address=master,
                                daemon_address=daemon, service=service, scope_path=scope_path, granted_at=now,
                                expires_at=expires_at, max_uses=max_uses, audit_proof="", agent_id=agent_id,
                                agent_id_prefix=agent_id_prefix)
        event = msgspec.structs.replace(unsigned, audit_proof=self.proof_signer.sign(grant_content(unsigned)))
        binding_stream = WalletBinding.stream_for(omni, daemon)
        for _ in range(5):
            binding = self.ledger.load(WalletBinding, binding_stream)
            try:
                bind_events = binding.bind(omni_account=omni, address=daemon, role="daemon", parent_address=master)
            except WalletRoleConflict as exc:
                raise Refusal("wallet_role_conflict", str(exc)) from None
            parts = [(binding_stream, binding.version, bind_events)] if bind_events else []
            parts.append((Grant.stream_for(grant_id), 0, [event]))
            try:
                records = await self.ledger.append_many_async(parts)
                break
            except ConcurrencyConflict:
                continue
        else:  # pragma: no cover
            raise Refusal("contended", "grant creation contended; retry")
        await self.grants.caught_up(records[-1].seq)
        return event

    async def revoke(self, caller: Caller, grant_id: str) -> None:
        stream = Grant.stream_for(grant_id)
        for _ in range(5):
            grant = self.ledger.load(Grant, stream)
            try:
                events = grant.revoke(now_unix=int(self.clock()), by_omni_account=caller.omni_account)
            except GrantRefused:
                raise Refusal("grant_not_revocable", "grant not found, not yours, or already revoked") from None
            try:
                records = await self.ledger.append_async(stream, grant.version, events)
                break
            except ConcurrencyConflict:
                continue
        else:  # pragma: no cover
            raise Refusal("contended", "grant revocation contended; retry")
        await self.grants.caught_up(records[-1].seq)

    async def release_daemon(self, caller: Caller, daemon_address: str) -> list[str]:
        """The daemon itself releases every master's live grants naming it; a master releases only
        its own. Anyone else, or no binding at all: `not_found` (one answer, no oracle). Returns the
        revoked grant ids."""
        try:
            daemon = normalize_address(daemon_address)
        except ValueError as exc:
            raise Refusal("bad_request", f"daemon_address: {exc}") from None
        is_daemon = bool(caller.wallet_address) and caller.wallet_address.lower() == daemon
        for _ in range(5):
            now = int(self.clock())
            rows = [row for row in self.grants.live_for_daemon(daemon, now)
                    if is_daemon or row.master_omni_account == caller.omni_account]
            parts: list[tuple[uuid.UUID, int, list[Event]]] = []
            masters: list[str] = []
            revoked: list[str] = []
            for row in rows:
                grant = self.ledger.load(Grant, Grant.stream_for(row.grant_id))
                try:
                    events = grant.release(now_unix=now, by_omni_account=caller.omni_account)
                except GrantRefused:
                    continue  # revoked or expired since the read model saw it
                parts.append((grant.stream, grant.version, events))
                revoked.append(row.grant_id)
                if row.master_omni_account not in masters:
                    masters.append(row.master_omni_account)
            if not parts:
                raise Refusal("not_found", "no binding of this daemon visible to this caller")
            for master in masters:
                parts.append((stream_id("daemon-release", uuid.uuid4().hex), 0, [DaemonReleased(
                    daemon_address=daemon, master_omni_account=master, by=caller.omni_account)]))
            try:
                records = await self.ledger.append_many_async(parts)
            except ConcurrencyConflict:
                continue  # a grant was used or revoked meanwhile: decide again
            await self.grants.caught_up(records[-1].seq)
            return revoked
        raise Refusal("contended", "daemon release contended; retry")  # pragma: no cover

    def list(self, caller: Caller) -> Sequence[Any]:
        return self.grants.of_master(caller.omni_account)
