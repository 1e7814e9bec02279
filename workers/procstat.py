"""A process's peak memory, read from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """The process's peak resident set: VmHWM, which exec resets (ru_maxrss keeps a forking parent's high-water
    mark). None where /proc does not report it (not Linux, or the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
