"""Simulated trials in the control plane: `manage.py simulate SPEC` end to end (profiles measured first with real
instance processes, then the simulated driver), stored as ordinary trials labelled simulated; the options are
validated with the field named; a missing profile fails the trial with what to measure."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from controlplane.experiments import services
from controlplane.experiments.models import Profile, Trial
from workers import spec as S


@pytest.fixture
def spec_file(spec_data, tmp_path):
    spec_data["workload"] = {"pattern": "poisson", "rate_rps": 40, "duration_s": 20, "seed": 3}
    spec_data["variants"][1]["repeats"] = 1
    spec_data.pop("accelerator")  # transactional tests start without the seeded price catalogue
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_data))
    return path


@pytest.mark.django_db(transaction=True)  # the trial monitor writes from its own thread
def test_simulate_profiles_what_is_missing_then_stores_simulated_trials(spec_file, tmp_path, test_redis, media_root,
                                                                        settings):
    settings.MODEL_DIR = tmp_path / "models"
    out = io.StringIO()
    call_command("simulate", str(spec_file), "--short", "--json", str(tmp_path / "sim.json"), stdout=out,
                 stderr=io.StringIO())
    text = out.getvalue()
    print(text)
    assert "profiling first" in text and "SIMULATED" in text
    trials = list(Trial.objects.order_by("id"))
    assert len(trials) == 2 and all(t.status == Trial.Status.SUCCEEDED for t in trials)
    for t in trials:
        assert t.simulated and t.simulation == {"devices": 1, "placement": "first_fit", "profiles": {}}
        assert t.summary["simulated"] is True and t.summary["requests"] > 500
        assert t.summary["simulation"]["profiles"][0]["id"] == str(Profile.objects.get().code)
        assert t.summary["cost"]["spans"] and t.windows.count() >= 20
        assert t.artifact
    rows = json.loads((tmp_path / "sim.json").read_text())["trials"]
    assert {r["variant"] for r in rows} == {"dedicated", "batched"}
    # The profile is reused: a second simulation measures nothing.
    out = io.StringIO()
    call_command("simulate", str(spec_file), "--no-measure", stdout=out, stderr=io.StringIO())
    assert "profiling first" not in out.getvalue()
    assert Profile.objects.count() == 1 and Trial.objects.filter(simulation__isnull=False).count() == 4


@pytest.mark.django_db(transaction=True)  # the trial monitor writes from its own thread
def test_simulation_options_are_checked_and_a_missing_profile_fails_with_what_to_measure(spec_file, user,
                                                                                          test_redis, media_root):
    with pytest.raises(S.SpecError, match="simulate.devices"):
        services.simulation_options({"devices": 0})
    with pytest.raises(S.SpecError, match="simulate.placement"):
        services.simulation_options({"placement": "random"})
    with pytest.raises(CommandError, match="no profile on cpu"):
        call_command("simulate", str(spec_file), "--no-measure", stdout=io.StringIO(), stderr=io.StringIO())
    from controlplane.experiments.models import Experiment
    from workers.tasks import run_trial_by_id

    exp = services.experiment_import(owner=user, data=json.loads(spec_file.read_text()))
    run = services.experiment_run(experiment=Experiment.objects.get(pk=exp.pk), user=user, enqueue=False,
                                  simulate={"devices": 2})
    assert all(t.queue == services.INLINE_QUEUE and t.simulation["devices"] == 2 for t in run)
    assert run_trial_by_id(run[0].id, worker="test", redis_conn=None, publish=False) == "failed"
    run[0].refresh_from_db()
    assert "no profile of mlp-small on cpu" in run[0].error and "Profile button" in run[0].error


@pytest.mark.django_db(transaction=True)
def test_validate_simulator_compares_real_and_simulated_runs_and_stores_the_result(spec_data, tmp_path, test_redis,
                                                                                 media_root, settings):
    settings.MODEL_DIR = tmp_path / "models"
    spec_data.pop("accelerator")
    spec_data["workload"] = {"pattern": "poisson", "rate_rps": 50, "duration_s": 4, "seed": 3}
    spec_data["variants"] = [{"name": "one", "sharing": "time_slice", "min_instances": 1, "max_instances": 1}]
    path = tmp_path / "v.json"
    path.write_text(json.dumps(spec_data))
    out = io.StringIO()
    with pytest.raises(CommandError, match="--real-runs: 1 to 10"):
        call_command("validate_simulator", str(path), "--real-runs", "0", stdout=io.StringIO(), stderr=io.StringIO())
    call_command("validate_simulator", str(path), "--short", "--real-runs", "2", "--json", str(tmp_path / "v-out.json"),
                 stdout=out, stderr=io.StringIO())
    print(out.getvalue())
    assert "the 2 real runs spread p50 " in out.getvalue()
    result = json.loads((tmp_path / "v-out.json").read_text())
    row = result["variants"][0]
    assert row["variant"] == "one" and result["real_runs"] == 2
    # two real runs of the same arrivals: the reference is their median, and their own spread is the noise floor
    runs = row["real_runs"]
    assert len(runs) == 2 and row["real"]["p50"] == pytest.approx((runs[0]["p50"] + runs[1]["p50"]) / 2)
    assert row["p50_real_spread"] == pytest.approx(abs(runs[0]["p50"] - runs[1]["p50"]) / row["real"]["p50"])
    assert row["p99_real_spread"] >= 0
    for key in ("p50_rel_err", "p99_rel_err", "throughput_rel_err", "cold_starts_rel_err"):
        assert isinstance(row[key], float), key
    # Loose bounds (a busy 2-core machine): the same arrivals all complete in both, and the median is the
    # same order of magnitude; the note and docs/method.md give the figures measured on reference specs.
    assert abs(row["throughput_rel_err"]) < 0.05
    assert abs(row["p50_rel_err"]) < 1.0
    profile = Profile.objects.get()
    assert profile.validation["variants"][0]["variant"] == "one" and profile.validation["spec"] == spec_data["name"]
    # A simulated trial from that profile carries the validation.
    call_command("simulate", str(path), "--no-measure", stdout=io.StringIO(), stderr=io.StringIO())
    sim = Trial.objects.get(simulation__isnull=False)
    assert sim.summary["simulation"]["profiles"][0]["validation"]["spec"] == spec_data["name"]


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_the_simulation_worker_of_manage_py_worker_runs_simulated_trials_side_by_side(spec_data, user, tmp_path,
                                                                                      settings):
    """`manage.py worker --sim-workers 2`'s simulation worker: two simulated trials of a run at the same time."""
    import uuid

    import redis

    from controlplane.celery import app
    from controlplane.experiments.management.commands.worker import sim_worker_argv
    from controlplane.experiments.models import Experiment
    from tests import processes
    from tests.conftest import TEST_REDIS_URL
    from tests.controlplane.test_profiles import stored
    from workers.tasks import execute_trial

    prefix = f"slsbench-sim-{uuid.uuid4().hex[:8]}"
    settings.MEDIA_ROOT = tmp_path / "media"
    stored(model="mlp-small", service_ms=2.0)
    spec_data.pop("accelerator")
    # A simulated quarter of an hour at 200 req/s (180,000 requests, 900 windows): each trial takes several seconds
    # even simulated, long enough for the two to overlap.
    spec_data["workload"] = {"pattern": "poisson", "rate_rps": 200, "duration_s": 900, "seed": 3}
    spec_data["variants"][1]["repeats"] = 1
    exp = services.experiment_import(owner=user, data=spec_data)
    run = services.experiment_run(experiment=Experiment.objects.get(pk=exp.pk), user=user, enqueue=False,
                                  simulate={})
    env = processes.subprocess_env(redis_url=TEST_REDIS_URL, channels_prefix=prefix, media_root=settings.MEDIA_ROOT)
    argv = sim_worker_argv(prefix, 2) + ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    assert argv[argv.index("-Q") + 1] == services.SIM_QUEUE and argv[argv.index("--concurrency") + 1] == "2"
    proc = processes.start(argv, env, tmp_path / "sim-worker.log")
    try:
        processes.wait_for(lambda: " ready." in processes.log_text(proc), 90, "the simulation worker", proc)
        with app.connection_for_write(TEST_REDIS_URL, transport_options={"global_keyprefix": f"{prefix}:"}) as conn:
            for t in run:
                execute_trial.apply_async(args=[t.id], queue=services.SIM_QUEUE, connection=conn)

        def done():
            return all(Trial.objects.get(pk=t.pk).is_finished for t in run)

        processes.wait_for(done, 300, "the simulated trials", proc)
    finally:
        processes.stop(proc)
        client = redis.Redis.from_url(TEST_REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    a, b = (Trial.objects.get(pk=t.pk) for t in run)
    assert a.status == b.status == "succeeded", (a.error, b.error)
    assert a.summary["simulated"] and a.summary["requests"] > 170_000
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # side by side, not one after the other
