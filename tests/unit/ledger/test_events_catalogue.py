"""docs/events.md documents every event class and only fields the class has."""

from __future__ import annotations

import re

from ledger import events as ev
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "events.md").read_text()


def _sections() -> dict[str, str]:
    parts = re.split(r"^## (\w+)\s*$", DOC, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_event_class_has_a_section_with_its_fields() -> None:
    sections = _sections()
    for name, cls in ev.registered_types().items():
        if cls.__module__ != "ledger.events":
            continue  # test-only events
        assert name in sections, f"docs/events.md has no section for {name}"
        documented = set(re.findall(r"^\| `(\w+)` \|", sections[name], flags=re.M))
        assert documented == set(cls.__struct_fields__), f"{name}: documented {documented} != {cls.__struct_fields__}"
