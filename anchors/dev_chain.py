"""A local anvil node (design §3: chain id 84532, like Base Sepolia), for `dev` and the tests.

`Anvil` starts the pinned binary from node_modules by path (``ANVIL_BIN`` overrides it) on a random
port, parses ``Listening on 127.0.0.1:NNNNN`` and the banner's private keys, keeps draining its
output (so a chatty node never blocks on a full pipe), and stops it by PID: SIGTERM, then SIGKILL
after 5 s.

The pytest fixtures built on it live in tests/support_anvil.py.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the project checkout (node_modules lives here)
DEFAULT_ANVIL_BIN = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
CHAIN_ID = 84532

#: anvil's defaults (mnemonic "test test … junk", m/44'/60'/0'/0/i); used if the banner is silent.
WELL_KNOWN_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)

_LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+)")
_KEY_LINE = re.compile(r"^\s*\((\d+)\)\s+(0x[0-9a-fA-F]{64})\s*$")


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A `preexec_fn` (Linux) that makes the child get SIGTERM when the thread that started it
    dies (PR_SET_PDEATHSIG), so a SIGKILLed `dev` or test run leaves no orphan; if the parent is
    already gone by then, the child ends itself at once. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover - runs in the child between fork and exec
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:
            return
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def anvil_bin() -> Path:
    return Path(os.environ.get("ANVIL_BIN") or DEFAULT_ANVIL_BIN)


class AnvilError(RuntimeError):
    pass


class Anvil:
    """One anvil process. Use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        *extra_args: str,
        chain_id: int = CHAIN_ID,
        binary: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.binary = Path(binary) if binary else anvil_bin()
        self.chain_id = chain_id
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.private_keys: list[str] = []
        self.output: collections.deque[str] = collections.deque(maxlen=2000)
        self._reader: threading.Thread | None = None
        self._rpc_id = 0

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        return [str(self.binary), "--host", self.host, "--port", "0", "--chain-id", str(self.chain_id), *self.extra_args]

    def start(self) -> Anvil:
        if self.proc is not None:
            raise AnvilError("already started")
        if not self.binary.exists():
            raise AnvilError(f"anvil binary not found at {self.binary} (run `npm ci`, or set ANVIL_BIN)")
        self.proc = subprocess.Popen(  # noqa: S603  fixed argv built by this module, no shell
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # a Ctrl-C in the terminal does not hit it before we do
            preexec_fn=die_with_parent_preexec(),  # and it never outlives its parent
        )
        listening = threading.Event()
        keys: list[tuple[int, str]] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None  # noqa: S101  type narrowing of an invariant established just above
            in_keys = False
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                self.output.append(line)
                if not listening.is_set():
                    if line.strip() == "Private Keys":
                        in_keys = True
                    elif in_keys and (m := _KEY_LINE.match(line)):
                        keys.append((int(m.group(1)), m.group(2)))
                    elif in_keys and line.strip() and not line.strip().startswith("="):
                        in_keys = False
                    if m := _LISTENING.search(line):
                        self.host, self.port = m.group(1), int(m.group(2))
                        listening.set()
            listening.set()  # EOF: the process exited

        self._reader = threading.Thread(target=read, name="anvil-stdout", daemon=True)
        self._reader.start()
        if not listening.wait(self.start_timeout_s) or self.port is None:
            tail = "\n".join(list(self.output)[-20:])
            self.stop()
            raise AnvilError(f"anvil did not report its port within {self.start_timeout_s}s:\n{tail}")
        self.private_keys = [k for _, k in sorted(keys)] or list(WELL_KNOWN_KEYS)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                got = int(self.rpc("eth_chainId"), 16)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
                continue
            if got != self.chain_id:
                raise AnvilError(f"anvil reports chain id {got}, expected {self.chain_id}")
            return

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM by PID, SIGKILL after `grace_s`. Returns the exit code (None if never started)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> Anvil:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- access -------------------------------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise AnvilError("not started")
        return f"http://{self.host}:{self.port}"

    @property
    def accounts(self) -> list[Any]:
        """The funded accounts as eth_account LocalAccounts (10,000 ETH each)."""
        from eth_account import Account

        return [Account.from_key(k) for k in self.private_keys]

    def web3(self, timeout_s: float = 10.0) -> Any:
        from web3 import Web3

        return Web3(Web3.HTTPProvider(self.rpc_url, request_kwargs={"timeout": timeout_s}))

    def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        """A raw JSON-RPC call (stdlib only). Raises AnvilError on a JSON-RPC error."""
        self._rpc_id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._rpc_id, "method": method, "params": list(params)}).encode()
        req = urllib.request.Request(self.rpc_url, data=body, headers={"Content-Type": "application/json"})  # noqa: S310  URL is the configured local http endpoint, not user input
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310  URL is the configured local http endpoint, not user input
            reply = json.loads(resp.read())
        if "error" in reply:
            raise AnvilError(f"{method}: {reply['error']}")
        return reply.get("result")

    def snapshot(self) -> str:
        return self.rpc("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        if self.rpc("evm_revert", [snapshot_id]) is not True:
            raise AnvilError(f"evm_revert({snapshot_id}) failed")

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)


# --- fixtures ----------------------------------------------------------------------------------
