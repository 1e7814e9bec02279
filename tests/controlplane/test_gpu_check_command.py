"""`manage.py gpu_check` on this CPU host: one line that says there is no GPU, exit 0, --json still written.
What it does on a GPU host is tested piece by piece in tests/workers/test_gpucheck.py."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command


def test_on_a_host_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    call_command("gpu_check", "--json", str(tmp_path / "gpu.json"), stdout=out, stderr=err)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU on this host (cuda:0 requested")
    assert err.getvalue() == ""
    doc = json.loads((tmp_path / "gpu.json").read_text())
    assert doc["gpu"] is False and doc["rows"] == [] and doc["failed"] is False
    assert doc["host"]["reason"] in lines[0]


def test_another_device_is_named_in_the_line():
    out = io.StringIO()
    call_command("gpu_check", "--device", "cuda:3", stdout=out)
    assert "cuda:3 requested" in out.getvalue()


def test_seconds_out_of_bounds_are_refused():
    with pytest.raises(CommandError, match="--seconds must be between 1 and 60"):
        call_command("gpu_check", "--seconds", "0.1", stdout=io.StringIO())


def test_make_gpu_check_runs_the_command_with_its_arguments():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    # --no-print-directory: under `make test` this make is a sub-make, which would print "Leaving directory".
    dry = subprocess.run(["make", "--no-print-directory", "-n", "gpu-check",
                          "GPU_CHECK_ARGS=--device cuda:1 --seconds 2"], cwd=root,
                         capture_output=True, text=True, check=True)
    assert dry.stdout.splitlines()[-1] == ".venv/bin/python manage.py gpu_check --device cuda:1 --seconds 2"
