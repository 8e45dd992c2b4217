"""Every `BROKER_*` setting, in one place: name, default, parser, documentation, runbook anchor.

`BrokerConfig.from_env(env)` is called only by entry points (`serve`, `dev`, `workers`). A bad value
raises `BootFailure`, printed as one line (seed-spec F.3):

    BOOT_FAIL: BROKER_LEDGER_BATCH_MAX="0": must be an integer in [1, 10000]; see runbook §ledger-batching

`docs/operator-runbook.md` has a heading for every anchor used here (a test checks it) and its
configuration table is generated from `SETTINGS` (`python -m api.config --markdown`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

ANCHOR_ALIASES = {"sqlite": "sqlite", "evm": "evm", "evm_testnet": "evm"}
KNOWN_ANCHORS_BUILT = ("sqlite",)  # anchors this build can construct


class BootFailure(Exception):
    """A configuration value is unusable; the broker refuses to start."""

    def __init__(self, var: str, value: str | None, reason: str, anchor: str) -> None:
        self.var, self.value, self.reason, self.anchor = var, value, reason, anchor
        shown = "(unset)" if value is None else value
        super().__init__(f'BOOT_FAIL: {var}="{_escape(shown)}": {reason}; see runbook §{anchor}')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    doc: str
    anchor: str
    group: str = "core"


SETTINGS: tuple[Setting, ...] = (
    Setting("BROKER_DATA_DIR", None, "Directory for the broker's files (ledger, anchor, projections). "
            "Default `$HOME/.agentkeys/broker/data`.", "data-dir"),
    Setting("BROKER_LEDGER_DB", None, "Ledger SQLite file. Default `$BROKER_DATA_DIR/ledger.sqlite`.", "ledger-db", "ledger"),
    Setting("BROKER_SQLITE_ANCHOR_DB", None, "SQLite anchor file (keep it on another disk if you can: it is a "
            "separate failure domain). Default `$BROKER_DATA_DIR/anchor.sqlite`.", "sqlite-anchor-db", "audit"),
    Setting("BROKER_PROJECTIONS_DB", None, "Read-model SQLite file. Default `$BROKER_DATA_DIR/projections.sqlite`.",
            "projections-db", "ledger"),
    Setting("BROKER_AUDIT_ANCHORS", "sqlite", "Comma list of anchors that must confirm releases: `sqlite`, `evm` "
            "(`evm_testnet` is an alias).", "audit-anchors", "audit"),
    Setting("BROKER_LEDGER_BATCH_MAX", "256", "Group commit: most appends sharing one transaction, [1, 10000].",
            "ledger-batching", "ledger"),
    Setting("BROKER_LEDGER_BATCH_MAX_WAIT_MS", "0", "Group commit: longest wait for more appends to join a "
            "batch, milliseconds, [0, 1000].", "ledger-batching", "ledger"),
    Setting("BROKER_DEV_MODE", "false", "`true` relaxes production-only checks. Never in production.", "dev-mode"),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value == "":
        return SETTINGS_BY_NAME[name].default
    return value


def _int(env: Mapping[str, str], name: str, lo: int, hi: int) -> int:
    raw = _get(env, name)
    s = SETTINGS_BY_NAME[name]
    try:
        value = int(str(raw).strip())
    except (TypeError, ValueError):
        raise BootFailure(name, env.get(name), f"must be an integer in [{lo}, {hi}]", s.anchor) from None
    if not lo <= value <= hi:
        raise BootFailure(name, env.get(name), f"must be an integer in [{lo}, {hi}]", s.anchor)
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (_get(env, name) or "false").strip().lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise BootFailure(name, env.get(name), "must be true or false", SETTINGS_BY_NAME[name].anchor)


def _anchors(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _get(env, "BROKER_AUDIT_ANCHORS") or ""
    names: list[str] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        canonical = ANCHOR_ALIASES.get(part)
        if canonical is None or canonical not in KNOWN_ANCHORS_BUILT:
            raise BootFailure("BROKER_AUDIT_ANCHORS", env.get("BROKER_AUDIT_ANCHORS"),
                              f"unknown or unavailable anchor {part!r} (available: {', '.join(KNOWN_ANCHORS_BUILT)})",
                              "audit-anchor-not-compiled")
        if canonical not in names:
            names.append(canonical)
    if not names:
        raise BootFailure("BROKER_AUDIT_ANCHORS", env.get("BROKER_AUDIT_ANCHORS"),
                          "at least one audit anchor must be configured (default `sqlite`)", "audit-anchor-empty")
    return tuple(names)


@dataclass(frozen=True)
class BrokerConfig:
    data_dir: Path
    ledger_db: Path
    anchor_db: Path
    projections_db: Path
    anchors: tuple[str, ...] = ("sqlite",)
    ledger_batch_max: int = 256
    ledger_batch_max_wait_ms: int = 0
    dev_mode: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BrokerConfig":
        env = os.environ if env is None else env
        data_dir_raw = _get(env, "BROKER_DATA_DIR")
        if data_dir_raw is None:
            home = env.get("HOME")
            data_dir = (Path(home) if home else Path(".")) / ".agentkeys" / "broker" / "data"
        else:
            data_dir = Path(data_dir_raw).expanduser()

        def path(name: str, default_name: str) -> Path:
            raw = _get(env, name)
            return Path(raw).expanduser() if raw else data_dir / default_name

        return cls(
            data_dir=data_dir,
            ledger_db=path("BROKER_LEDGER_DB", "ledger.sqlite"),
            anchor_db=path("BROKER_SQLITE_ANCHOR_DB", "anchor.sqlite"),
            projections_db=path("BROKER_PROJECTIONS_DB", "projections.sqlite"),
            anchors=_anchors(env),
            ledger_batch_max=_int(env, "BROKER_LEDGER_BATCH_MAX", 1, 10000),
            ledger_batch_max_wait_ms=_int(env, "BROKER_LEDGER_BATCH_MAX_WAIT_MS", 0, 1000),
            dev_mode=_bool(env, "BROKER_DEV_MODE"),
        )

    def check_paths(self) -> None:
        """Boot-time checks that the files can be created (before binding)."""
        for var, p, anchor in (
            ("BROKER_LEDGER_DB", self.ledger_db, "ledger-db"),
            ("BROKER_SQLITE_ANCHOR_DB", self.anchor_db, "sqlite-anchor-db"),
            ("BROKER_PROJECTIONS_DB", self.projections_db, "projections-db"),
        ):
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BootFailure(var, str(p), f"cannot create directory {p.parent}: {exc.strerror}", anchor) from None
            if p.exists() and not os.access(p, os.R_OK | os.W_OK):
                raise BootFailure(var, str(p), "file is not readable and writable by the broker", anchor)
        if self.ledger_db.resolve() == self.anchor_db.resolve():
            raise BootFailure("BROKER_SQLITE_ANCHOR_DB", str(self.anchor_db),
                              "must be a different file from the ledger (an anchor is a separate failure domain)",
                              "sqlite-anchor-db")


def markdown_table() -> str:
    lines = ["| Variable | Default | Meaning | Runbook |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default is not None else "(derived)"
        lines.append(f"| `{s.name}` | {default} | {s.doc} | [§{s.anchor}](#{s.anchor}) |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
