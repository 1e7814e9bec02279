"""`manage.py bench run-enqueue --short`: Run on an experiment with a trace and 64 trials, end to end through the
command. The seconds are printed, never asserted (the goal is the full run's to judge); the database's growth is
checked against the trace's own size, measured in the same run: about one copy, not one per trial."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from controlplane.experiments.models import Experiment, RunSpec, Trial

pytestmark = pytest.mark.django_db


def test_bench_run_enqueue_stores_the_trace_once_for_64_trials(media_root):
    out = io.StringIO()
    call_command("bench", "run-enqueue", "--short", "--json", stdout=out)
    r = json.loads(out.getvalue())
    print("\n" + json.dumps(r, indent=2))
    assert r["benchmark"] == "run-enqueue" and r["short"] is True
    assert r["trials"] == r["second_run_trials"] == 64 and r["stored_specs"] == 1
    assert r["run_s"] > 0 and r["second_run_s"] > 0
    assert r["trace_bytes"] > 400_000
    # One copy of the trace (SQLite stores it as it is; PostgreSQL's TOAST compresses it): never one per trial.
    assert r["db_growth_bytes"] < 2 * r["trace_bytes"]
    assert r["second_run_db_growth_bytes"] < r["trace_bytes"] / 4  # the same spec again: trial rows only
    assert set(r["goals"]) == {"run_s", "db_growth_trace_copies"}
    assert all(v["enforced"] is False for v in r["goals"].values())
    assert not Experiment.objects.exists() and not RunSpec.objects.exists() and not Trial.objects.exists()
