"""The repository stands on its own: no code, page or doc sends a reader to the team's private design notes, which
nobody outside the team has; a rule that matters is stated in docs/architecture.md or docs/method.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"DESIGN\.md|STYLE\.md|FIELD-NOTES|\.\./shared\b")


def test_no_tracked_file_cites_the_private_notes():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    me = Path(__file__).resolve().relative_to(ROOT).as_posix()
    assert len(files) > 100  # the listing worked
    hits = []
    for name in files:
        if name == me:
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):  # a binary file; one deleted but not yet committed
            continue
        hits += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, hits


def test_the_rules_the_code_names_are_stated_in_the_docs():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rules = re.findall(r"^(\d)\. \*\*", text, flags=re.M)
    assert rules == [str(i) for i in range(1, 9)], rules
