#!/usr/bin/env python3
"""Record how the real CLIs refuse bad argv, into samples/refusals.json.

Not used by the test suite: run it by hand when a CLI changes (see README.md),
with the real CLIs on PATH or in the directory given. tests/test_fakes.py then
checks that each fake prints the same bytes and exits with the same status.

Usage: python3 tests/fakes/record_refusals.py [bin-dir]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [
    ["claude", "-p", "--bogus-flag"],
    ["claude", "-p", "--verbos"],
    ["claude", "-p", "--allowedTool", "Bash"],
    ["claude", "-p", "--permission-mode", "bogus"],
    ["claude", "-p", "--output-format", "xml"],
    ["claude", "-p", "--model"],
    ["claude", "-p", "-X"],
    ["claude", "-p", "--verbose=1"],
    ["codex", "exec", "--bogus-flag"],
    ["codex", "exec", "--jsn"],
    ["codex", "exec", "--sandbox", "bogus"],
    ["codex", "exec", "--sandbox", "readonly"],
    ["codex", "exec", "--model"],
    ["codex", "exec", "--json", "--json"],
    ["codex", "exec", "--model", "a", "-m", "b"],
    ["codex", "exec", "--json=1"],
    ["codex", "exec", "one", "two"],
    ["codex", "exec", "resume", "--bogus-flag"],
    ["codex", "exec", "resume", "--sandbox", "read-only"],
    ["codex", "exec", "resume", "-s", "read-only"],
    ["codex", "exec", "resume", "a", "b", "c"],
    ["gemini", "--bogus-flag"],
    ["gemini", "--bogus", "--other-flag"],
    ["gemini", "-x"],
    ["gemini", "--approval-mode", "bogus"],
    ["gemini", "--model"],
    ["opencode", "run", "--bogus-flag"],
    ["opencode", "run", "--format", "bogus"],
]


def main() -> None:
    bindir = sys.argv[1] if len(sys.argv) > 1 else ""
    out = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as home:
        # No RUST_BACKTRACE: the hub does not pass it, and codex prints more with it.
        env = {"PATH": os.environ["PATH"], "HOME": home, "TERM": "dumb", "NO_COLOR": "1"}
        for argv in CASES:
            program = os.path.join(bindir, argv[0]) if bindir else argv[0]
            done = subprocess.run(
                [program, *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, env=env,
                cwd=home, timeout=60,
            )  # fmt: skip
            said = {"stdout": done.stdout.decode(), "stderr": done.stderr.decode()}
            out.append({"argv": argv, "status": done.returncode, **said})
    path = Path(__file__).resolve().parent / "samples" / "refusals.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} cases to {path}")


if __name__ == "__main__":
    main()
