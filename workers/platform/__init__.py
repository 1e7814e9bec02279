"""The serverless platform: one scheduling core (core.py), driven on the wall clock with real instances (real.py)
or on a virtual clock with service times sampled from measured profiles (sim.py)."""

from workers.platform.real import (
    MEMORY_HEADROOM,
    Platform,
    PlatformError,
    choose_torch_threads,
    configure_torch_threads,
    restore_torch_threads,
)

__all__ = ["MEMORY_HEADROOM", "Platform", "PlatformError", "choose_torch_threads", "configure_torch_threads",
           "restore_torch_threads"]
