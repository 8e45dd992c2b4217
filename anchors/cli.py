"""`agentkeys-broker anchors deploy|status|keystore`: the EVM anchor's operator commands.

    agentkeys-broker anchors keystore --out F --password-file F [--private-key-file F]
    agentkeys-broker anchors deploy --rpc URL --keystore F --password-file F [--chain-id N]
                                    [--submitter ADDR] [--start-seq N]
    agentkeys-broker anchors status [--ledger-db F] [--sqlite-anchor-db F] [--evm-state-db F]
                                    [--rpc URL [--contract ADDR]] [--json]

`status` reports how far each anchor confirmed (and its lag behind the ledger head), the EVM
anchor's pending batches, the fee payer's balance, and reads every batch the contract holds
(batchCount, batchAt) to check they cover startSeq..lastSeq contiguously. Exit codes: 0 fine,
1 the check ran and found a problem (batches not contiguous, a local batch the chain does not hold
as recorded, a chain behind the anchor's confirmed position, a wrong chain id), 2 usage or I/O
error. Expected failures are one line on stderr (`CommandError`), never a traceback.

Heavy imports (web3, eth-account) happen inside the handlers; files are opened read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ledger.errors import CommandError

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2


def register(subparsers: Any) -> None:
    group = subparsers.add_parser(
        "anchors",
        help="EVM anchor: create a fee-payer keystore, deploy the contract, check anchoring status",
        description="Operator commands for the audit anchors: create the EVM fee payer's encrypted keystore, "
                    "deploy the AuditAnchor contract, and report what every anchor confirmed.",
    )
    sub = group.add_subparsers(dest="anchors_command", metavar="SUBCOMMAND")

    def missing(args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return EXIT_ERROR

    group.set_defaults(handler=missing)

    ks = sub.add_parser(
        "keystore",
        help="write an encrypted keystore (the EVM fee payer's key), mode 0600",
        description="Encrypt a private key (a new random one unless --private-key-file is given) into a Web3 "
                    "Secret Storage v3 keystore (scrypt), mode 0600. An existing file is never overwritten. "
                    "Prints the address to fund.",
    )
    ks.add_argument("--out", required=True, type=Path, metavar="FILE", help="the keystore file to create")
    ks.add_argument("--password-file", required=True, type=Path, metavar="FILE",
                    help="file holding the password (mode 0600; one trailing newline is ignored)")
    ks.add_argument("--private-key-file", type=Path, metavar="FILE",
                    help="file holding an existing private key as 64 hex digits (mode 0600); default: a new key")
    ks.set_defaults(handler=_keystore)

    dp = sub.add_parser(
        "deploy",
        help="deploy the AuditAnchor contract and print BROKER_EVM_CONTRACT_ADDRESS",
        description="Deploy AuditAnchor(submitter, startSeq) from the keystore's account (which becomes the "
                    "owner) and print the address and the BROKER_EVM_CONTRACT_ADDRESS line.",
    )
    dp.add_argument("--rpc", required=True, metavar="URL", help="JSON-RPC URL of the chain")
    dp.add_argument("--keystore", required=True, type=Path, metavar="FILE", help="the deployer's encrypted keystore")
    dp.add_argument("--password-file", required=True, type=Path, metavar="FILE", help="the keystore's password file")
    dp.add_argument("--chain-id", type=int, metavar="N",
                    help="refuse unless the RPC reports this chain id (84532 = Base Sepolia)")
    dp.add_argument("--submitter", metavar="ADDR",
                    help="the only address allowed to anchor (the broker's fee payer); default: the deployer")
    dp.add_argument("--start-seq", type=int, default=1, metavar="N",
                    help="first seq this contract anchors (default 1; a migration uses the old lastSeq + 1)")
    dp.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="how long to wait for the deployment receipt (default %(default)s)")
    dp.set_defaults(handler=_deploy)

    st = sub.add_parser(
        "status",
        help="what each anchor confirmed, pending EVM batches, fee-payer balance, on-chain contiguity",
        description="Report each anchor's confirmed position (and lag behind the ledger head), the EVM anchor's "
                    "pending batches and the fee payer's balance, and check that the contract's batches cover "
                    "its seqs contiguously. Exit 0 fine, 1 problems found, 2 usage or I/O error.",
    )
    st.add_argument("--ledger-db", type=Path, metavar="FILE", help="the ledger SQLite file (read-only)")
    st.add_argument("--sqlite-anchor-db", type=Path, metavar="FILE", help="the SQLite anchor file (read-only)")
    st.add_argument("--evm-state-db", type=Path, metavar="FILE", help="the EVM anchor's state file (read-only)")
    st.add_argument("--rpc", metavar="URL", help="JSON-RPC URL: read the contract's batches and the fee payer's balance")
    st.add_argument("--contract", metavar="ADDR",
                    help="the AuditAnchor address (default: the one recorded in --evm-state-db)")
    st.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per RPC request (default %(default)s)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(handler=_status)


# --- keystore --------------------------------------------------------------------------------------


def _keystore(args: argparse.Namespace) -> int:
    from .evm_keys import KeystoreError, check_secret_file, read_password, write_keystore

    try:
        password = read_password(args.password_file.expanduser())
        key: str | None = None
        if args.private_key_file is not None:
            kf = args.private_key_file.expanduser()
            check_secret_file(kf, "private key file")
            try:
                key = kf.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeystoreError(f"private key file {kf}: cannot read it: {exc}") from None
            if not key:
                raise KeystoreError(f"private key file {kf} is empty")
        account = write_keystore(args.out.expanduser(), password, key)
    except KeystoreError as exc:
        raise CommandError(f"anchors keystore: {exc}", EXIT_ERROR) from None
    print(f"address: {account.address}")
    print(f"keystore: {args.out.expanduser().resolve()}")
    return EXIT_OK


# --- deploy ----------------------------------------------------------------------------------------


def _deploy(args: argparse.Namespace) -> int:
    from .evm_keys import KeystoreError, load_fee_payer

    if args.start_seq < 1:
        raise CommandError("anchors deploy: --start-seq must be >= 1", EXIT_ERROR)
    from eth_utils import is_address, to_checksum_address

    if args.submitter is not None and not is_address(args.submitter):
        raise CommandError(f"anchors deploy: --submitter {args.submitter!r} is not an address", EXIT_ERROR)
    # the chain first: it answers at once, the keystore's key derivation takes seconds
    w3 = _web3(args.rpc, min(args.timeout, 30.0))
    chain_id = _rpc(lambda: int(w3.eth.chain_id), args.rpc, "deploy")
    if args.chain_id is not None and chain_id != args.chain_id:
        raise CommandError(f"anchors deploy: {args.rpc} reports chain id {chain_id}, expected {args.chain_id}",
                           EXIT_PROBLEMS)
    try:
        deployer = load_fee_payer(args.keystore.expanduser(), args.password_file.expanduser())
    except KeystoreError as exc:
        raise CommandError(f"anchors deploy: {exc}", EXIT_ERROR) from None
    submitter = to_checksum_address(args.submitter or deployer.address)
    balance = _rpc(lambda: int(w3.eth.get_balance(deployer.address)), args.rpc, "deploy")
    if balance == 0:
        raise CommandError(f"anchors deploy: the deployer {deployer.address} has no funds on chain {chain_id}",
                           EXIT_PROBLEMS)
    from web3.exceptions import ContractLogicError, Web3RPCError

    from . import chain_tools

    try:
        d = chain_tools.deploy(w3, deployer, submitter, args.start_seq, timeout_s=args.timeout)
    except (ContractLogicError, Web3RPCError, RuntimeError) as exc:
        raise CommandError(f"anchors deploy: deployment failed: {_short(exc)}", EXIT_PROBLEMS) from None
    except Exception as exc:  # RPC I/O (timeouts, refused connections)
        raise CommandError(f"anchors deploy: {args.rpc}: {_short(exc)}", EXIT_ERROR) from None
    receipt = d.receipt
    print(f"AuditAnchor deployed at {d.address}")
    print(f"  chain id:  {chain_id}")
    print(f"  tx:        0x{bytes(receipt['transactionHash']).hex()} (block {receipt['blockNumber']}, gas {d.gas_used})")
    print(f"  owner:     {deployer.address}")
    print(f"  submitter: {submitter}")
    print(f"  start seq: {args.start_seq}")
    print(f"BROKER_EVM_CONTRACT_ADDRESS={d.address}")
    return EXIT_OK


# --- status ----------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    if not any((args.ledger_db, args.sqlite_anchor_db, args.evm_state_db, args.rpc)):
        raise CommandError("anchors status: give at least one of --ledger-db, --sqlite-anchor-db, --evm-state-db, "
                           "--rpc", EXIT_ERROR)
    if args.contract and not args.rpc:
        raise CommandError("anchors status: --contract needs --rpc", EXIT_ERROR)
    report: dict[str, Any] = {"problems": []}
    problems: list[str] = report["problems"]
    head: int | None = None
    if args.ledger_db:
        report["ledger"] = _ledger_head(args.ledger_db.expanduser())
        head = report["ledger"]["head_seq"]
    anchors: dict[str, Any] = {}
    report["anchors"] = anchors
    if args.sqlite_anchor_db:
        anchors["sqlite"] = _sqlite_anchor(args.sqlite_anchor_db.expanduser())
    evm_local: dict[str, Any] | None = None
    local_batches: list[dict[str, Any]] = []
    if args.evm_state_db:
        evm_local, local_batches = _evm_state(args.evm_state_db.expanduser())
        anchors["evm"] = evm_local
    for a in anchors.values():
        if head is not None:
            a["lag"] = max(0, head - a["confirmed_upto"])
    if args.rpc:
        contract = args.contract or (evm_local or {}).get("contract")
        if not contract:
            raise CommandError("anchors status: --rpc needs --contract (or an --evm-state-db that records it)",
                               EXIT_ERROR)
        report["chain"] = _chain(args, contract, evm_local, local_batches, problems)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_human(report)
    return EXIT_PROBLEMS if problems else EXIT_OK


def _ledger_head(path: Path) -> dict[str, Any]:
    from ledger.audit import SELECT_HEAD_SQL, AuditError, connect_readonly

    try:
        conn = connect_readonly(path, "ledger")
    except AuditError as exc:
        raise CommandError(f"anchors status: {exc}", EXIT_ERROR) from None
    try:
        row = conn.execute(SELECT_HEAD_SQL).fetchone()
    except Exception as exc:
        raise CommandError(f"anchors status: ledger {path}: not an agentkeys ledger ({exc})", EXIT_ERROR) from None
    finally:
        conn.close()
    return {"db": str(path), "head_seq": int(row[0]) if row else 0, "head_hash": row[1] if row else None}


def _sqlite_anchor(path: Path) -> dict[str, Any]:
    from ledger.audit import AuditError, connect_readonly

    try:
        conn = connect_readonly(path, "sqlite anchor")
    except AuditError as exc:
        raise CommandError(f"anchors status: {exc}", EXIT_ERROR) from None
    try:
        n = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM anchored").fetchone()[0])
    except Exception as exc:
        raise CommandError(f"anchors status: sqlite anchor {path}: no `anchored` table ({exc})", EXIT_ERROR) from None
    finally:
        conn.close()
    return {"db": str(path), "confirmed_upto": n}


def _evm_state(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from .errors import AnchorUnavailable
    from .evm_store import EvmStore

    try:
        store = EvmStore(path, readonly=True)
    except AnchorUnavailable as exc:
        raise CommandError(f"anchors status: {exc}", EXIT_ERROR) from None
    try:
        meta = store.meta()
        batches = [b.public() for b in store.batches()]
        info = {
            "state_db": str(path),
            "chain_id": int(meta["chain_id"]) if "chain_id" in meta else None,
            "contract": meta.get("contract"),
            "fee_payer": meta.get("fee_payer"),
            "accepted_upto": store.accepted_upto(),
            "confirmed_upto": store.confirmed_upto(),
            "batches": len(batches),
            "pending_batches": [b for b in batches if b["status"] != "confirmed"],
        }
    except AnchorUnavailable as exc:
        raise CommandError(f"anchors status: {exc}", EXIT_ERROR) from None
    finally:
        store.close()
    return info, batches


def _chain(args: argparse.Namespace, contract_address: str, evm_local: dict[str, Any] | None,
           local_batches: list[dict[str, Any]], problems: list[str]) -> dict[str, Any]:
    from eth_utils import is_address, to_checksum_address

    from . import chain_tools
    from .evm import check_contiguity, read_chain_batches

    if not is_address(contract_address):
        raise CommandError(f"anchors status: {contract_address!r} is not an address", EXIT_ERROR)
    address = to_checksum_address(contract_address)
    w3 = _web3(args.rpc, args.timeout)
    chain_id = _rpc(lambda: int(w3.eth.chain_id), args.rpc, "status")
    code = _rpc(lambda: bytes(w3.eth.get_code(address)), args.rpc, "status")
    if not code:
        raise CommandError(f"anchors status: no contract at {address} on chain {chain_id}", EXIT_PROBLEMS)
    c = chain_tools.contract_at(w3, address)

    def read() -> tuple[int, int, str, list[Any]]:
        block = w3.eth.block_number  # one block for every read: a consistent view
        start = int(c.functions.startSeq().call(block_identifier=block))
        last = int(c.functions.lastSeq().call(block_identifier=block))
        submitter = c.functions.submitter().call(block_identifier=block)
        return start, last, submitter, read_chain_batches(c, block_identifier=block)

    start, last, submitter, batches = _rpc(read, args.rpc, "status")
    fee_payer = (evm_local or {}).get("fee_payer") or submitter
    balance = _rpc(lambda: int(w3.eth.get_balance(to_checksum_address(fee_payer))), args.rpc, "status")
    gaps = check_contiguity(batches, start)
    if batches and batches[-1].last_seq != last:
        gaps.append(f"the last batch ends at {batches[-1].last_seq} but lastSeq() is {last}")
    problems.extend(f"chain: {g}" for g in gaps)
    if evm_local is not None:
        if evm_local.get("chain_id") not in (None, chain_id):
            problems.append(f"chain: the RPC reports chain id {chain_id}, the EVM anchor state is for {evm_local['chain_id']}")
        if evm_local.get("contract") and evm_local["contract"].lower() != address.lower():
            problems.append(f"chain: the EVM anchor state is for contract {evm_local['contract']}, not {address}")
        else:
            if last < evm_local["confirmed_upto"]:
                problems.append(f"chain: lastSeq() is {last}, below the EVM anchor's confirmed_upto "
                                f"{evm_local['confirmed_upto']} (a reorg or the wrong contract)")
            by_first = {b.first_seq: b for b in batches}
            for lb in local_batches:
                if lb["status"] != "confirmed":
                    continue
                ob = by_first.get(lb["first_seq"])
                if ob is None or (ob.last_seq, ob.root, ob.chain_head) != (lb["last_seq"], lb["root"], lb["chain_head"]):
                    problems.append(f"chain: the EVM anchor's confirmed batch {lb['first_seq']}..{lb['last_seq']} "
                                    f"(root {lb['root']}) is not on chain as recorded")
    return {
        "rpc": args.rpc,
        "chain_id": chain_id,
        "contract": address,
        "start_seq": start,
        "last_seq": last,
        "batch_count": len(batches),
        "submitter": submitter,
        "fee_payer": to_checksum_address(fee_payer),
        "fee_payer_balance_wei": str(balance),
        "contiguous": not gaps,
        "batches": [b.as_dict() for b in batches] if args.json else None,
    }


def _print_human(report: dict[str, Any]) -> None:
    ledger = report.get("ledger")
    if ledger:
        print(f"ledger: head seq {ledger['head_seq']} ({ledger['db']})")
    for name, a in report["anchors"].items():
        lag = f" (lag {a['lag']})" if "lag" in a else ""
        if name == "sqlite":
            print(f"sqlite anchor: confirmed up to {a['confirmed_upto']}{lag} ({a['db']})")
        else:
            pending = a["pending_batches"]
            print(f"evm anchor: accepted up to {a['accepted_upto']}, confirmed up to {a['confirmed_upto']}{lag}; "
                  f"{a['batches']} batch(es), {len(pending)} pending ({a['state_db']})")
            for b in pending:
                block = b["block_number"] if b["block_number"] is not None else "-"
                print(f"  pending {b['first_seq']}..{b['last_seq']}: {b['status']}, tx {b['tx_hash'] or '-'}, "
                      f"nonce {b['nonce'] if b['nonce'] is not None else '-'}, block {block}")
    chain = report.get("chain")
    if chain:
        eth = int(chain["fee_payer_balance_wei"]) / 10**18
        covered = (f"seqs {chain['start_seq']}..{chain['last_seq']}" if chain["last_seq"] >= chain["start_seq"]
                   else "no seqs yet")
        print(f"chain {chain['chain_id']}, contract {chain['contract']}: {chain['batch_count']} batch(es), {covered}, "
              f"{'contiguous' if chain['contiguous'] else 'NOT CONTIGUOUS'}")
        print(f"fee payer {chain['fee_payer']}: {chain['fee_payer_balance_wei']} wei ({eth:.6f} ETH)")
    for p in report["problems"]:
        print(f"PROBLEM: {p}")
    print("OK" if not report["problems"] else f"{len(report['problems'])} problem(s)")


# --- helpers ---------------------------------------------------------------------------------------


def _web3(url: str, timeout_s: float) -> Any:
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"--rpc must be an http:// or https:// URL, got {url!r}", EXIT_ERROR)
    from .evm_config import make_web3

    return make_web3(url, timeout_s)


def _rpc(call: Any, url: str, command: str) -> Any:
    """Run an RPC read; an I/O failure becomes one line, exit 2."""
    try:
        return call()
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(f"anchors {command}: EVM RPC {url}: {_short(exc)}", EXIT_ERROR) from None


def _short(exc: BaseException) -> str:
    from .evm_config import _rpc_reason

    return _rpc_reason(exc)
