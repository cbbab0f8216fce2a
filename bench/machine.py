"""What machine a benchmark ran on, for the `machine` key of every bench/results/*.json."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def python_build() -> dict:
    """The interpreter a bench ran on: version, real path, and whether libpython is a shared library (as in a
    default pyenv build, which runs the data stage with ~25% more CPU than a static PGO+LTO one; see
    scripts/pick_python.sh). None where /proc is missing."""
    try:
        shared = "libpython" in Path("/proc/self/maps").read_text()
    except OSError:
        shared = None
    return {"python": platform.python_version(), "python_executable": os.path.realpath(sys.executable),
            "libpython_shared": shared}
