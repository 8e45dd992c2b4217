"""A writer process for the crash test: appends from several threads forever and prints one
`ack <seq> <hash>` line per acknowledged append (flushed), until it is killed."""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path

from ledger.app import Ledger
from ledger.config import LedgerConfig
from ledger.events import WalletBound


def main() -> None:
    db = Path(sys.argv[1])
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    led = Ledger(LedgerConfig(db))
    out_lock = threading.Lock()

    def worker(i: int) -> None:
        n = 0
        while True:
            n += 1
            rec = led.append(uuid.uuid4(), 0, [WalletBound(omni_account=f"{i:064x}", address=f"0x{n:040x}", role="master")])[0]
            with out_lock:
                sys.stdout.write(f"ack {rec.seq} {rec.hash}\n")
                sys.stdout.flush()

    for i in range(threads):
        threading.Thread(target=worker, args=(i,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
