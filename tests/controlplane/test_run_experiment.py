"""`manage.py run_experiment SPEC --inline`: the trials run in this process, through the same function the
Celery task calls. (The path through Celery is tested with a real worker in tests/workers/test_tasks.py.)"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from controlplane.experiments.models import Experiment, Trial

# The monitor thread writes windows from its own connection: rows must be committed to be seen.
pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLE = Path(settings.BASE_DIR) / "examples" / "classifier-poc.json"


@pytest.fixture
def short_spec(tmp_path):
    def write(**changes) -> Path:
        data = {
            "name": "short-poc", "device": "cpu", "accelerator": "cpu",
            "slo": {"percentile": 99, "latency_ms": 50},
            "functions": [{"name": "classify", "model": "mlp-small"}],
            "workload": {"pattern": "poisson", "rate_rps": 30, "duration_s": 1.5, "seed": 7},
            "variants": [{"name": "dedicated"},
                         {"name": "batched", "batching": {"mode": "fixed", "max_batch_size": 8,
                                                          "max_queue_delay_ms": 4}}],
        }
        data.update(changes)
        path = tmp_path / f"{data['name']}.json"
        path.write_text(json.dumps(data))
        return path

    return write


def run(*args) -> str:
    out = io.StringIO()
    call_command("run_experiment", *[str(a) for a in args], stdout=out, stderr=io.StringIO())
    return out.getvalue()


def every_figure_present(row: dict) -> list[str]:
    """Names of figures missing from a result row (cold start times exist only if there were cold starts)."""
    missing = [k for k in ("requests", "completed", "dropped", "errors", "slo_percentile_ci_ms", "slo_met",
                           "violation_rate", "throughput_rps", "goodput_rps", "cold_starts", "mean_batch_size",
                           "device", "simulated") if row.get(k) is None]
    # A percentile among unfinished requests is "beyond the run" (None) on a machine too busy to serve them in
    # the drain; then the completed-only figures must be there instead.
    latency = row["latency_completed_ms"] if row.get("unfinished") else row["latency_ms"]
    missing += [f"latency_ms.{k}" for k, v in latency.items() if v is None]
    # monthly_note is a reason, present only when there is no monthly figure; per good request needs a good one.
    no_good = not row.get("goodput_rps")
    missing += [f"cost.{k}" for k, v in row["cost"].items()
                if v is None and k != "monthly_note" and not (no_good and k.endswith("_good_usd"))]
    if row["cold_starts"]:
        missing += [f"cold_start_ms.{k}" for k, v in row["cold_start_ms"].items() if v is None]
    return missing


def test_the_example_spec_runs_inline_with_every_figure_for_every_variant(user, price_catalogue,
                                                                                         test_redis, media_root,
                                                                                         tmp_path):
    out_path = tmp_path / "results.json"

    started = time.monotonic()
    output = run(EXAMPLE, "--inline", "--json", out_path, "--owner", user.username)
    elapsed_s = time.monotonic() - started

    print(f"\nexample spec inline: {elapsed_s:.1f} s")  # a figure, not a goal: a busy machine stretches it
    document = json.loads(out_path.read_text())
    assert document["experiment"]["name"] == "classifier-poc"
    assert document["experiment"]["spec"]["workload"]["rate_rps"] == 200
    rows = document["trials"]
    assert [(r["variant"], r["repeat"], r["status"]) for r in rows] == [
        ("dedicated", 0, "succeeded"), ("batched", 0, "succeeded"), ("scale-to-zero", 0, "succeeded")]
    for row in rows:
        assert every_figure_present(row) == [], row["variant"]
        assert row["simulated"] is False
        assert 1600 <= row["requests"] <= 2400  # poisson at 200 rps for 10 s
    batched = rows[1]
    assert batched["mean_batch_size"] > 1
    scale_to_zero = rows[2]
    assert scale_to_zero["cold_starts"] >= 1  # min 0 instances: the first request pays a real cold start
    for row in rows:
        assert re.search(rf"^{row['variant']}\s+0\s+succeeded\s", output, re.M), output
    trials = Trial.objects.filter(experiment__name="classifier-poc")
    assert all(t.artifact and Path(t.artifact.path).exists() for t in trials)
    assert all(t.windows.count() >= 10 for t in trials)


def test_running_a_spec_again_updates_the_owners_experiment_and_starts_run_two(user, price_catalogue, test_redis,
                                                                              media_root, short_spec):
    path = short_spec(workload={"pattern": "constant", "rate_rps": 20, "duration_s": 1, "seed": 1},
                      variants=[{"name": "dedicated"}])
    run(path, "--inline", "--owner", user.username)
    path = short_spec(workload={"pattern": "constant", "rate_rps": 20, "duration_s": 1, "seed": 1},
                      variants=[{"name": "dedicated"}], description="second version")
    output = run(path, "--inline", "--owner", user.username)

    assert "updated experiment 'short-poc'" in output
    experiment = Experiment.objects.get(owner=user, name="short-poc")
    assert experiment.description == "second version"
    assert sorted(experiment.trials.values_list("run_number", "status")) == [(1, "succeeded"), (2, "succeeded")]


def test_repeats_on_the_command_line_override_the_spec(user, price_catalogue, test_redis, media_root, short_spec,
                                                       tmp_path):
    path = short_spec(workload={"pattern": "constant", "rate_rps": 20, "duration_s": 1, "seed": 1},
                      variants=[{"name": "dedicated", "repeats": 3}])

    run(path, "--inline", "--repeats", 2, "--owner", user.username, "--json", tmp_path / "out.json")

    rows = json.loads((tmp_path / "out.json").read_text())["trials"]
    assert [(r["variant"], r["repeat"], r["status"]) for r in rows] == [("dedicated", 0, "succeeded"),
                                                                        ("dedicated", 1, "succeeded")]
    # Repeats differ in their arrivals (seed + repeat), so they are two samples, not one run twice.
    assert rows[0]["requests"] == rows[1]["requests"] == 20


def test_an_invalid_spec_file_names_each_bad_field_and_saves_nothing(user, short_spec):
    path = short_spec(variants=[{"name": "bad", "batching": {"mode": "fixed", "max_batch_size": 0}}],
                      workload={"pattern": "poisson", "rate_rps": 0, "duration_s": 1})

    with pytest.raises(CommandError) as excinfo:
        run(path, "--inline", "--owner", user.username)

    message = str(excinfo.value)
    assert "variants[0].batching.max_batch_size: must be between 1 and 1024" in message
    assert "workload.rate_rps" in message
    assert not Experiment.objects.exists() and not Trial.objects.exists()


def test_a_missing_spec_file_is_a_clear_error(user, tmp_path):
    with pytest.raises(CommandError, match="cannot read spec file"):
        run(tmp_path / "nope.json", "--inline")


def test_a_failed_trial_makes_the_command_fail_with_its_reason_after_running_the_others(user, price_catalogue,
                                                                                       test_redis, media_root,
                                                                                       short_spec, tmp_path):
    path = short_spec(workload={"pattern": "constant", "rate_rps": 20, "duration_s": 1, "seed": 1},
                      variants=[{"name": "tiny-share", "sharing": "spatial", "share": 0.01}, {"name": "dedicated"}])

    with pytest.raises(CommandError) as excinfo:
        run(path, "--inline", "--owner", user.username, "--json", tmp_path / "out.json")

    assert excinfo.value.returncode == 1
    assert "1 of 2 trial(s) failed" in str(excinfo.value)
    assert "tiny-share #0: spatial sharing on cpu needs at least one whole core" in str(excinfo.value)
    rows = json.loads((tmp_path / "out.json").read_text())["trials"]
    assert [(r["variant"], r["status"]) for r in rows] == [("tiny-share", "failed"), ("dedicated", "succeeded")]
    assert rows[0]["error"].startswith("spatial sharing on cpu")


def test_inline_runs_without_redis_say_so_and_still_finish(user, price_catalogue, media_root, short_spec, settings,
                                                           tmp_path):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [settings.REDIS_URL]}}}
    path = short_spec(workload={"pattern": "constant", "rate_rps": 20, "duration_s": 1, "seed": 1},
                      variants=[{"name": "dedicated"}])
    err = io.StringIO()

    call_command("run_experiment", str(path), "--inline", "--owner", user.username, stdout=io.StringIO(), stderr=err)

    assert "Redis is not reachable: running without the device lease" in err.getvalue()
    assert Trial.objects.get().status == Trial.Status.SUCCEEDED


def test_the_default_owner_is_a_command_line_user_that_cannot_log_in(price_catalogue, test_redis, media_root,
                                                                     short_spec, django_user_model):
    path = short_spec(workload={"pattern": "constant", "rate_rps": 20, "duration_s": 1, "seed": 1},
                      variants=[{"name": "dedicated"}])

    run(path, "--inline")

    owner = django_user_model.objects.get(username="cli")
    assert not owner.has_usable_password()
    assert Experiment.objects.get().owner == owner


def test_the_table_shows_the_verdict_with_its_reasons_and_percentiles_beyond_the_drain():
    from controlplane.experiments.management.commands.run_experiment import format_row

    row = {"variant": "dedicated", "repeat": 0, "status": "succeeded", "requests": 1000, "unfinished": 12,
           "latency_ms": {"p50": 4.0, "p99": None}, "throughput_rps": 99.0, "cold_starts": 0, "cost": {},
           "slo_verdict": {"verdict": "not_met", "reasons": ["p99 latency beyond the run is above the target"]}}
    first, *details = format_row(row).splitlines()
    assert re.match(r"^dedicated\s+0\s+succeeded\s+4\.00\s+>drain\s+NOT MET\s", first), first
    assert details == ["    p99 > drain (12 unfinished)", "    SLO not met: p99 latency beyond the run is above the target"]
    unsure = dict(row, unfinished=0, latency_ms={"p50": 4.0, "p99": 48.0},
                  slo_verdict={"verdict": "inconclusive", "reasons": ["interval straddles the target"]})
    first, *details = format_row(unsure).splitlines()
    assert "48.00  inconclusive" in first and details == ["    SLO inconclusive: interval straddles the target"]
    met = dict(unsure, slo_verdict={"verdict": "met", "reasons": []})
    assert len(format_row(met).splitlines()) == 1 and "  met  " in format_row(met)
