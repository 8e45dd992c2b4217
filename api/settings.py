"""The shapes every settings module shares: `Setting` (one environment variable: default,
documentation, runbook anchor, group) and `BootFailure` (a configuration value the broker refuses
to start with). A leaf module, so `api.config` and `api.sts_config` both import it without
importing each other in a cycle."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BootFailure", "Setting"]


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
