"""docs/events.md's list of events "the design names that this build does not emit yet" names no
event class that exists (an emitted event listed as pending is a stale doc)."""

from __future__ import annotations

import re

from ledger import events as ev
from tests.conftest import ROOT


def test_events_listed_as_not_emitted_yet_do_not_exist() -> None:
    doc = (ROOT / "docs" / "events.md").read_text()
    match = re.search(r"does not emit yet:(.*?)\n\n", doc, flags=re.S)
    assert match, "docs/events.md: the 'does not emit yet' list is missing"
    pending = set(re.findall(r"`(\w+)`", match.group(1)))
    emitted = {name for name, cls in ev.registered_types().items() if cls.__module__ == "ledger.events"}
    assert not pending & emitted, f"docs/events.md lists emitted events as not emitted yet: {pending & emitted}"
