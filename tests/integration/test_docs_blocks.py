"""Docs that run: every `sh`/`bash` and `python` block of README.md, docs/daemon-guide.md and
docs/auditor-guide.md is executed, in document order, against one `agentkeys-broker dev`.

A block preceded by `<!-- docs-test: skip: REASON -->` (the last non-blank line before its fence)
is skipped; the reason is required. Each document runs in a directory of its own, holding
`.agentkeys-dev` (the dev broker's state directory) and `.venv` (this venv) as the repository root
would, with `.venv/bin` first on PATH. Shell blocks run with `bash -e -o pipefail`, each in its own
process; python blocks share one namespace per document. The docs name the default URL
`http://127.0.0.1:8091`; the test's broker listens on a free port, so that address is replaced with
the test broker's before a block runs (the only rewrite).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, cli_path
from tests.support import free_port

DOCS = ("README.md", "docs/daemon-guide.md", "docs/auditor-guide.md")
SHELL, PYTHON = {"sh", "bash", "shell"}, {"python", "py"}
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip:\s*(\S.*?)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
DEFAULT_NETLOC = "127.0.0.1:8091"


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None


def blocks(doc: str) -> list[Block]:
    out: list[Block] = []
    lines = (ROOT / doc).read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1).lower(), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.match(prev)
        if lang in SHELL | PYTHON:
            out.append(Block(doc, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n", skip.group(1) if skip else None))
        i = j + 1
    return out


def test_every_skip_marker_gives_a_reason_and_precedes_a_block() -> None:
    for doc in DOCS:
        lines = (ROOT / doc).read_text().splitlines()
        for n, line in enumerate(lines):
            if "<!--" not in line or "docs-test:" not in line:
                continue
            assert SKIP.match(line.strip()), f"{doc}:{n + 1}: malformed marker (want <!-- docs-test: skip: REASON -->)"
            following = next((x for x in lines[n + 1:] if x.strip()), "")
            assert FENCE.match(following), f"{doc}:{n + 1}: a skip marker must directly precede a code block"
    assert any(b.skip is None for doc in DOCS for b in blocks(doc))


@pytest.fixture(scope="module")
def dev_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("docs-dev")
    state, port = base / "state", free_port()
    env = {**os.environ, "HOME": str(base), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([cli_path(), "dev", "--port", str(port), "--state-dir", str(state)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(base / "dev.log", "w"))
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (base / "dev.log").read_text()
            try:
                if (state / "dev.json").exists() and httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dev did not become ready"
            time.sleep(0.2)
        yield {"state": state, "port": port, "info": json.loads((state / "dev.json").read_text())}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _workdir(tmp_path: Path, state: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".agentkeys-dev").symlink_to(state)
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return work


@pytest.mark.parametrize("doc", DOCS)
def test_docs_blocks_run(doc: str, dev_broker: dict, tmp_path: Path) -> None:
    work = _workdir(tmp_path, dev_broker["state"])
    netloc = f"127.0.0.1:{dev_broker['port']}"
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIRTUAL_ENV"))}
    env.update({"PATH": f"{venv_bin}:{env.get('PATH', '')}", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"), "AWS_EC2_METADATA_DISABLED": "true"})
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in blocks(doc):
        if block.skip:
            continue
        code = block.code.replace(DEFAULT_NETLOC, netloc)
        where = f"{doc}:{block.line} ({block.lang})"
        if block.lang in SHELL:
            out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=work, env=env, capture_output=True,
                                 text=True, timeout=300)
            assert out.returncode == 0, f"{where} exited {out.returncode}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
            assert "Traceback" not in out.stderr, f"{where}\n{out.stderr}"
        else:
            buffer = io.StringIO()
            cwd = os.getcwd()
            os.chdir(work)
            try:
                with contextlib.redirect_stdout(buffer):
                    exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the docs' own code
            except Exception as exc:
                raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}\n--- stdout\n{buffer.getvalue()}") from exc
            finally:
                os.chdir(cwd)
        ran += 1
    assert ran > 0 or doc == "docs/auditor-guide.md"
