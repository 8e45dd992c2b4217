"""`agentkeys-broker audit ...`: the offline auditor's commands, in one module.

    agentkeys-broker audit export --db LEDGER --out FILE.jsonl [--progress]
    agentkeys-broker audit verify (--db LEDGER | --export FILE.jsonl) [--anchor-db ANCHOR]
                                 [--rpc URL --contract ADDR [--contract ADDR ...] [--block TAG|N]]
                                 [--checkpoint FILE] [--json] [--progress]
    agentkeys-broker audit prove --seq N (--db LEDGER | --export FILE) --rpc URL --contract ADDR [...]
                                 [--out FILE] [--block latest|safe|finalized|N]
    agentkeys-broker audit verify-proof BUNDLE (--rpc URL --contract ADDR [...] | --offline) [--json]

Exit codes: 0 valid (or bundle written), 1 findings / invalid proof / ledger does not match the
chain, 2 usage, I/O or RPC error (one line on stderr, never a traceback). Expected failures print
`agentkeys-broker: error: <message>`, the line `workers.cli.main` prints for a `CommandError`.

Imports: parsing the command line loads nothing but argparse. The handlers import `ledger.audit`
(pure: it never loads the writer, ledger/store.py and eventsourcing); `anchors` (and web3) only
when a chain is involved: `--rpc`, `audit prove`, `audit verify-proof` without `--offline`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_VALID = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

BLOCK_TAGS = ("latest", "safe", "finalized")

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: Any) -> None:
    group = subparsers.add_parser(
        "audit",
        help="export and verify the hash-chained ledger offline",
        description="Offline auditor: export the ledger to JSONL and verify the hash chain, without trusting the broker.",
    )
    sub = group.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    group.set_defaults(handler=_missing_subcommand(group))

    # --- audit export ---------------------------------------------------------------------------
    export = sub.add_parser(
        "export",
        help="write the ledger as JSONL (header line, then one record per line)",
        description="Write the ledger as JSONL: a header line, then one record (envelope plus hash) per line. "
        "The database is opened read-only; the file is written atomically.",
    )
    export.add_argument("--db", required=True, metavar="LEDGER", help="the SQLite ledger file")
    export.add_argument("--out", required=True, metavar="FILE.jsonl", help="the export file to write")
    export.add_argument("--progress", action="store_true", help="report progress on stderr (default: only on a terminal)")
    export.set_defaults(handler=_export)

    # --- audit verify ---------------------------------------------------------------------------
    verify = sub.add_parser(
        "verify",
        help="recompute every hash and link; compare with an anchor",
        description="Recompute every record hash and every link of the chain, and compare anchored hashes. "
        "Exit 0 valid, 1 findings, 2 usage or I/O error.",
    )
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", metavar="LEDGER", help="verify a SQLite ledger (opened read-only)")
    source.add_argument("--export", metavar="FILE.jsonl", help="verify an export file")
    verify.add_argument("--anchor-db", metavar="ANCHOR", help="a SQLite anchor database (table `anchored(seq, hash)`)")
    verify.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    verify.add_argument("--progress", action="store_true", help="report progress on stderr (default: only on a terminal)")
    opts = verify.add_argument_group(
        "EVM anchor and checkpoint",
        "recompute every anchored batch root and chain head from the records (--rpc with --contract), "
        "and keep a trusted checkpoint between runs (--checkpoint, with or without --rpc)",
    )
    _chain_options(opts, required=False)
    opts.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="trusted state {seq, hash, verified_at, source}: report `diverged` / `truncated` against it; "
        "created or advanced to the verified head when the run is valid",
    )
    verify.set_defaults(handler=_verify)

    # --- audit prove ----------------------------------------------------------------------------
    prove = sub.add_parser(
        "prove",
        help="write the proof bundle of one record against the EVM anchor",
        description="Build the proof bundle (format agentkeys-proof v1) of the record at --seq: the record, its "
        "anchored batch, its RFC 9162 inclusion path and the anchoring transaction. Refuses (exit 1) if the "
        "ledger's records no longer recompute the anchored root. Exit 2: usage, I/O, RPC error, or seq not anchored yet.",
    )
    prove.add_argument("--seq", required=True, type=_positive, metavar="N", help="the record's seq")
    prove_source = prove.add_mutually_exclusive_group(required=True)
    prove_source.add_argument("--db", metavar="LEDGER", help="the SQLite ledger (opened read-only)")
    prove_source.add_argument("--export", metavar="FILE.jsonl", help="a ledger export")
    _chain_options(prove, required=True)
    prove.add_argument("--out", metavar="FILE", help="write the bundle here (atomically) instead of stdout")
    prove.set_defaults(handler=_prove)

    # --- audit verify-proof ---------------------------------------------------------------------
    vp = sub.add_parser(
        "verify-proof",
        help="verify a proof bundle offline and against the chain",
        description="Check a proof bundle: the record hash recomputes, the inclusion path leads to the batch root, "
        "and (with --rpc) the contract holds that batch and its verifyRecord/verifyInclusion return true. "
        "Exit 0 valid, 1 invalid (each problem printed), 2 usage, I/O or RPC error.",
    )
    vp.add_argument("bundle", metavar="BUNDLE", help="the bundle file (- for stdin)")
    _chain_options(vp, required=False)
    vp.add_argument(
        "--offline", action="store_true", help="only the offline checks (no RPC): says nothing about what the chain holds"
    )
    vp.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    vp.set_defaults(handler=_verify_proof)


# --- argument types ---------------------------------------------------------------------------------


def _block(value: str) -> int | str:
    if value in BLOCK_TAGS:
        return value
    try:
        n = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a block number or one of {', '.join(BLOCK_TAGS)}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("a block number is >= 0")
    return n


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError("expected a positive integer")
    return n


def _chain_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool) -> None:
    p.add_argument(
        "--rpc", metavar="URL", required=required, help="JSON-RPC endpoint of the chain holding the AuditAnchor contract(s)"
    )
    p.add_argument(
        "--contract",
        metavar="ADDR",
        action="append",
        required=required,
        help="AuditAnchor contract address; repeat in migration order (each continues at the previous one's lastSeq + 1)",
    )
    p.add_argument(
        "--block",
        type=_block,
        default="latest",
        metavar="TAG|N",
        help="read the contracts at this block: latest (default), safe, finalized, or a number",
    )


# --- plumbing ---------------------------------------------------------------------------------------


def _missing_subcommand(parser: argparse.ArgumentParser) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_ERROR

    return handler


def _fail(message: str) -> int:
    """An expected failure: one line on stderr, exit 2 (as `workers.cli.CommandError` would)."""
    print(f"agentkeys-broker: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _progress(args: argparse.Namespace, label: str) -> Any:
    from ledger import audit

    if getattr(args, "progress", False) or sys.stderr.isatty():
        return audit.stderr_progress(label)
    return None


def _reader(args: argparse.Namespace) -> Any:
    from anchors.chain_reader import ChainReader

    return ChainReader(args.rpc, args.contract, block=args.block)


def _print_json(obj: Any) -> None:
    import msgspec

    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")
    sys.stdout.flush()


def _write_atomic(path: str, data: bytes) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


# --- handlers ---------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    from ledger import audit

    try:
        result = audit.export_ledger(args.db, args.out, progress=_progress(args, "audit export"))
    except audit.AuditError as exc:
        return _fail(str(exc))
    print(f"exported {result.records} records to {args.out}, head seq {result.head_seq} hash {result.head_hash}")
    return EXIT_VALID


def _verify(args: argparse.Namespace) -> int:
    from ledger import audit

    if (args.rpc is None) != (not args.contract):
        return _fail("--rpc and --contract go together")
    errors: tuple[type[Exception], ...] = (audit.AuditError, audit.CheckpointError)
    chain = None
    try:
        if args.rpc is not None:  # only now: anchors (and web3)
            from anchors.chain_audit import chain_check
            from anchors.chain_reader import ChainError

            errors = (*errors, ChainError)
            chain = chain_check(_reader(args))
        result = audit.verify_ledger(
            export=args.export,
            db=args.db,
            anchor_db=args.anchor_db,
            checkpoint=args.checkpoint,
            chain=chain,
            progress=_progress(args, "audit verify"),
        )
    except errors as exc:
        return _fail(str(exc))
    if args.json:
        _print_json(result.to_json())
    else:
        sys.stdout.write("\n".join(result.summary_lines()) + "\n")
        sys.stdout.flush()
    return EXIT_VALID if result.valid else EXIT_FINDINGS


def _prove(args: argparse.Namespace) -> int:
    from anchors.chain_reader import ChainError
    from anchors.proof_builder import ProveError, prove
    from ledger.audit import AuditError, LedgerMismatch, proofs

    try:
        reader = _reader(args)
        bundle = prove(reader, args.seq, db=args.db, export=args.export)
    except LedgerMismatch as exc:
        print(f"agentkeys-broker: refused: {exc}", file=sys.stderr)
        return EXIT_FINDINGS
    except (AuditError, ChainError, ProveError) as exc:
        return _fail(str(exc))
    data = proofs.encode_bundle(bundle)
    if args.out:
        try:
            _write_atomic(args.out, data)
        except OSError as exc:
            return _fail(f"cannot write {args.out}: {exc.strerror or exc}")
        b, evm = bundle["batch"], bundle["anchors"]["evm"]
        print(
            f"proof of seq {args.seq} (hash {bundle['record']['hash']}) in batch #{evm.get('batch_index')} "
            f"(seqs {b['first_seq']}..{b['last_seq']}) of {evm['contract']}, tx {evm['tx_hash']} block {evm['block_number']}: "
            f"wrote {args.out}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(data.decode())
        sys.stdout.flush()
    return EXIT_VALID


def _load_bundle(path: str) -> dict[str, Any]:
    """Read a bundle file (- for stdin). Raises `ProofError` with the file named."""
    from ledger.audit import ProofError, proofs

    p = Path(path)
    try:
        data = sys.stdin.buffer.read() if path == "-" else p.read_bytes()
    except OSError as exc:
        raise ProofError([f"cannot read bundle {p}: {exc.strerror or exc}"]) from None
    try:
        return proofs.decode_bundle(data)
    except ProofError as exc:
        raise ProofError([f"{p}: {exc}"]) from None


def _verify_proof(args: argparse.Namespace) -> int:
    from ledger.audit import ProofError, proofs

    if args.offline and (args.rpc or args.contract):
        return _fail("--offline takes no --rpc / --contract")
    if not args.offline and (args.rpc is None or not args.contract):
        return _fail("give --rpc URL and --contract ADDR (or --offline for the offline checks only)")
    try:
        bundle = _load_bundle(args.bundle)
    except ProofError as exc:
        return _fail(str(exc))
    reader = None
    onchain = None
    if args.offline:
        problems = proofs.verify_bundle_offline(bundle)
    else:
        from anchors.chain_reader import ChainError
        from anchors.proof_builder import verify_bundle

        try:
            reader = _reader(args)
            problems, onchain = verify_bundle(bundle, reader)
        except ChainError as exc:
            return _fail(str(exc))
    rec: dict[str, Any] = bundle["record"] if isinstance(bundle.get("record"), dict) else {}
    seq: Any = rec.get("seq")
    rh: Any = rec.get("hash")
    valid = not problems
    if args.json:
        out: dict[str, Any] = {
            "valid": valid, "seq": seq, "record_hash": rh, "problems": problems, "offline_only": reader is None
        }
        if reader is not None:
            out["chain"] = {"chain_id": reader.chain_id, "block": reader.block}
        if onchain is not None:
            out["batch"] = {
                "contract": onchain.contract,
                "index": onchain.index,
                "root": onchain.root.hex(),
                "first_seq": onchain.first_seq,
                "last_seq": onchain.last_seq,
                "chain_head": onchain.chain_head.hex(),
                "block_number": onchain.block_number,
            }
        _print_json(out)
    else:
        lines = [f"problem: {p}" for p in problems]
        if not valid:
            lines.append(f"INVALID: {len(problems)} problem(s) in the proof of seq {seq}")
        elif reader is None:
            lines.append(f"VALID OFFLINE: record seq {seq} hash {rh} is in the bundle's batch (not checked against the chain)")
        elif onchain is not None:
            lines.append(
                f"VALID: record seq {seq} hash {rh} is leaf {seq - onchain.first_seq} of batch #{onchain.index} "
                f"(seqs {onchain.first_seq}..{onchain.last_seq}) anchored by {onchain.contract} on chain {reader.chain_id} "
                f"in block {onchain.block_number}; verifyRecord returned true"
            )
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    return EXIT_VALID if valid else EXIT_FINDINGS


def run(argv: Sequence[str]) -> int:
    """Run `audit ...` in-process, as the console script would (tests)."""
    parser = argparse.ArgumentParser(prog="agentkeys-broker")
    register(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse usage errors exit 2
        return int(exc.code or 0)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    return int(handler(args) or 0)
