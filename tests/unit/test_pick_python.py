"""scripts/pick_python.sh, which `make setup` builds the venv from: it names a runnable interpreter of python3's
own X.Y version (so the wheels, torch's CPU wheel included, stay the same), and a lone candidate is python3.

    .venv/bin/python -m pytest tests/unit/test_pick_python.py -q
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pick_python.sh"


def version(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("python3") is None or shutil.which("bash") is None, reason="needs bash, python3")
def test_picks_an_interpreter_of_python3s_version():
    run = subprocess.run(["bash", str(SCRIPT)], check=True, capture_output=True, text=True)
    picked = run.stdout.strip()
    assert os.access(picked, os.X_OK) and version(picked) == version("python3")
    if "pick_python:" in run.stderr:  # several candidates: each one's best time is shown, then the choice
        assert run.stderr.strip().splitlines()[-1] == f"pick_python: {picked}"


@pytest.mark.skipif(shutil.which("python3") is None or shutil.which("bash") is None, reason="needs bash, python3")
def test_a_lone_candidate_is_python3_itself(tmp_path):
    # PATH's only python3 is a link to the build /usr/bin has of that version (if any), so every candidate is
    # one build: nothing is timed and python3 is the answer
    ver = version("python3")
    real = os.path.realpath(f"/usr/bin/python{ver}") if os.path.exists(f"/usr/bin/python{ver}") else \
        subprocess.run(["python3", "-c", "import os, sys; print(os.path.realpath(sys.executable))"], check=True,
                       capture_output=True, text=True).stdout.strip()
    (tmp_path / "python3").symlink_to(real)
    env = {**os.environ, "PATH": f"{tmp_path}:/bin:/usr/bin"}
    run = subprocess.run(["bash", str(SCRIPT)], check=True, capture_output=True, text=True, env=env)
    assert run.stdout.strip() == str(tmp_path / "python3") and run.stderr == ""
