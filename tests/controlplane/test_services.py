"""Services: the only writers. Valid specs are stored whole; invalid ones are refused with field paths and
leave nothing behind; runs create their trials and enqueue them only once the transaction commits."""

import copy
from pathlib import Path

import pytest
from django.db import transaction

from controlplane.experiments import selectors, services, spec_io
from controlplane.experiments.bench_run import trace_of_about
from controlplane.experiments.models import Experiment, Function, RunSpec, SLOTarget, Trial, Variant, Workload
from tests.controlplane.test_spec_io import azure_trace
from workers import spec as S
from workers.tasks import trial_spec

pytestmark = pytest.mark.django_db


def nothing_saved() -> bool:
    return not any(m.objects.exists() for m in (Experiment, SLOTarget, Function, Workload, Variant, Trial))


def import_errors(owner, data, experiment=None) -> dict[str, list[str]]:
    with pytest.raises(S.SpecError) as info:
        services.experiment_import(owner=owner, data=data, experiment=experiment)
    return info.value.by_path()


def trace_workload(content: str, **extra) -> dict:
    return {"pattern": "trace", "trace_format": "azure2019", "trace_content": content, "duration_s": 120,
            "time_compression": 10, **extra}


# ---- create -------------------------------------------------------------------------------------------------
def test_an_imported_spec_is_stored_with_every_part(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    assert experiment.owner == user and experiment.device == "cpu" and experiment.accelerator.name == "cpu"
    assert experiment.slo.latency_ms == 50 and experiment.slo.percentile == 99
    assert [f.name for f in experiment.functions.all()] == ["classify"]
    assert experiment.workloads.get().params == {"rate_rps": 20.0}
    batched = experiment.variants.get(name="batched")
    assert (batched.batching_mode, batched.max_batch_size, batched.max_queue_delay_ms, batched.repeats) == (
        "fixed", 8, 4.0, 2)
    assert [v.position for v in experiment.variants.all()] == [0, 1]


def test_experiment_create_takes_a_spec_built_by_the_parsers(user, spec_data):
    spec = S.parse_experiment(spec_data)
    experiment = services.experiment_create(owner=user, spec=spec)
    assert spec_io.experiment_to_spec(experiment) == spec


def test_experiment_create_revalidates_a_hand_built_spec(user, spec_data):
    spec = S.parse_experiment(spec_data)
    twins = S.ExperimentSpec(name="x", functions=spec.functions, workloads=spec.workloads,
                             variants=(spec.variants[0], spec.variants[0]))
    with pytest.raises(S.SpecError) as info:
        services.experiment_create(owner=user, spec=twins)
    assert "variants[1].name" in info.value.by_path()
    assert nothing_saved()


def test_an_unknown_accelerator_is_refused_listing_the_known_ones(user, spec_data):
    spec_data["accelerator"] = "TPU-v9"
    errors = import_errors(user, spec_data)
    assert errors["accelerator"][0].startswith("unknown price entry 'TPU-v9' (known: A100-40GB, ")
    assert "H100-80GB" in errors["accelerator"][0]
    assert nothing_saved()


BAD_INPUTS = {
    "zero rate": (lambda d: d["workload"].update(rate_rps=0), "workload.rate_rps"),
    "negative rate": (lambda d: d["workload"].update(rate_rps=-5), "workload.rate_rps"),
    "absurd rate": (lambda d: d["workload"].update(rate_rps=1e9), "workload.rate_rps"),
    "zero duration": (lambda d: d["workload"].update(duration_s=0), "workload.duration_s"),
    "absurd duration": (lambda d: d["workload"].update(duration_s=1e7), "workload.duration_s"),
    "unknown model": (lambda d: d["functions"][0].update(model="gpt-17"), "functions[0].model"),
    "percentile not listed": (lambda d: d["slo"].update(percentile=97), "slo.percentile"),
    "batch size 0": (lambda d: d["variants"][1]["batching"].update(max_batch_size=0),
                     "variants[1].batching.max_batch_size"),
    "min above max": (lambda d: d["variants"][0].update(min_instances=3, max_instances=2),
                      "variants[0].min_instances"),
    "unknown field": (lambda d: d["variants"][0].update(colour="red"), "variants[0].colour"),
    "unknown top-level field": (lambda d: d.update(owner="mallory"), "owner"),
    "bad device": (lambda d: d.update(device="tpu"), "device"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_spec_names_the_field_and_saves_nothing(user, spec_data, case):
    change, path = BAD_INPUTS[case]
    change(spec_data)
    errors = import_errors(user, spec_data)
    assert path in errors, errors
    assert nothing_saved()


def test_a_malformed_trace_names_its_line_and_saves_nothing(user, spec_data):
    lines = azure_trace([1, 2, 3]).splitlines()
    lines.append("o,a,f9,http,1,2")  # a short row on line 3
    spec_data["workload"] = trace_workload("\n".join(lines))
    errors = import_errors(user, spec_data)
    assert errors["workload.trace_content"][0].startswith("line 3: expected 1444 columns")
    assert nothing_saved()


def test_an_oversized_trace_is_refused(user, spec_data):
    spec_data["workload"] = trace_workload("x" * (S.MAX_TRACE_BYTES + 1))
    errors = import_errors(user, spec_data)
    assert "larger than 8 MiB" in errors["workload.trace_content"][0]
    assert nothing_saved()


def test_a_trace_path_is_refused_outside_spec_files(user, spec_data):
    # The API and forms must not be able to make the server read one of its own files.
    spec_data["workload"] = {"pattern": "trace", "trace_format": "timestamps", "trace_path": "/etc/passwd",
                             "duration_s": 60}
    errors = import_errors(user, spec_data)
    assert "only spec files may name a trace file" in errors["workload.trace_path"][0]
    assert nothing_saved()


def test_a_failure_after_the_trace_file_was_written_leaves_no_rows_and_no_file(user, spec_data, media_root,
                                                                                monkeypatch):
    spec_data["workload"] = trace_workload(azure_trace([4, 4]))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(services, "_variants_replace", broken)
    with pytest.raises(RuntimeError):
        services.experiment_import(owner=user, data=spec_data)
    assert nothing_saved()
    assert not [p for p in Path(media_root).rglob("*") if p.is_file()]


def test_a_trace_is_stored_as_a_file_under_media_root(user, spec_data, media_root):
    content = azure_trace([4, 4])
    spec_data["workload"] = trace_workload(content, trace_filename="../../etc/evil name.csv")
    experiment = services.experiment_import(owner=user, data=spec_data)
    w = experiment.workloads.get()
    assert Path(w.trace_file.path).resolve().is_relative_to(Path(media_root).resolve())
    assert "evil_name.csv" in w.trace_file.name and ".." not in w.trace_file.name
    assert w.trace_content() == content and w.trace_filename == "../../etc/evil name.csv"


# ---- update -------------------------------------------------------------------------------------------------
def test_an_update_replaces_the_parts_and_keeps_code_and_trials(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    code = experiment.code
    trials = services.experiment_run(experiment=experiment, user=user)
    new = copy.deepcopy(spec_data)
    new["name"] = "renamed"
    new["functions"] = [{"name": "other", "model": "null"}]
    new["variants"] = [dict(spec_data["variants"][1], max_instances=2), {"name": "fresh"}]
    experiment = services.experiment_import(owner=user, data=new, experiment=experiment)
    experiment.refresh_from_db()
    assert experiment.code == code and experiment.name == "renamed"
    assert [f.name for f in experiment.functions.all()] == ["other"]
    assert [v.name for v in experiment.variants.all()] == ["batched", "fresh"]
    assert Trial.objects.filter(experiment=experiment).count() == len(trials) == 3
    # trials of the variant that stayed keep their link; the removed variant's trials keep its name
    batched = experiment.variants.get(name="batched")
    assert set(Trial.objects.filter(variant=batched).values_list("variant_name", flat=True)) == {"batched"}
    assert Trial.objects.filter(variant__isnull=True).get().variant_name == "dedicated"
    assert spec_io.experiment_to_spec(experiment) == S.parse_experiment(new)


def test_a_bad_update_leaves_the_experiment_as_it_was(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    before = spec_io.experiment_to_dict(experiment)
    bad = copy.deepcopy(spec_data)
    bad["name"] = "changed"
    bad["variants"][0]["max_instances"] = 1000
    errors = import_errors(user, bad, experiment=experiment)
    assert "variants[0].max_instances" in errors
    assert spec_io.experiment_to_dict(Experiment.objects.get(pk=experiment.pk)) == before


def test_an_update_that_fails_halfway_rolls_back_every_part(user, spec_data, monkeypatch):
    experiment = services.experiment_import(owner=user, data=spec_data)
    before = spec_io.experiment_to_dict(experiment)
    new = copy.deepcopy(spec_data)
    new["name"] = "changed"
    new["functions"] = [{"name": "other", "model": "null"}]

    def broken(*args, **kwargs):
        raise RuntimeError("crash after functions were replaced")

    monkeypatch.setattr(services, "_variants_replace", broken)
    with pytest.raises(RuntimeError):
        services.experiment_update(experiment=experiment, spec=S.parse_experiment(new))
    assert spec_io.experiment_to_dict(Experiment.objects.get(pk=experiment.pk)) == before


def test_replacing_a_trace_deletes_the_old_file_once_committed(user, spec_data, media_root,
                                                              django_capture_on_commit_callbacks):
    spec_data["workload"] = trace_workload(azure_trace([1, 1]))
    experiment = services.experiment_import(owner=user, data=spec_data)
    old_path = Path(experiment.workloads.get().trace_file.path)
    spec_data["workload"] = trace_workload(azure_trace([2, 2]))
    with django_capture_on_commit_callbacks(execute=True):
        services.experiment_import(owner=user, data=spec_data, experiment=experiment)
        assert old_path.exists()  # still there until the commit: a rollback must find it
    assert not old_path.exists()
    assert experiment.workloads.get().trace_content() == azure_trace([2, 2])


# ---- clone and delete ---------------------------------------------------------------------------------------
def test_a_clone_copies_the_settings_not_the_trials_under_a_new_code(user, other_user, spec_data):
    spec_data["workload"] = trace_workload(azure_trace([3, 3]))
    experiment = services.experiment_import(owner=user, data=spec_data)
    services.experiment_run(experiment=experiment, user=user)
    clone = services.experiment_clone(experiment=experiment, owner=other_user)
    assert clone.name == "classifier-poc (copy)" and clone.owner == other_user and clone.code != experiment.code
    assert clone.trials.count() == 0
    assert {**spec_io.experiment_to_dict(clone), "name": "x"} == {**spec_io.experiment_to_dict(experiment), "name": "x"}
    named = services.experiment_clone(experiment=experiment, owner=user, name="second look")
    assert named.name == "second look"
    # the clone's trace is its own file: deleting the original must not take it away
    services.experiment_delete(experiment=experiment)
    assert clone.workloads.get().trace_content() == azure_trace([3, 3])


def test_variant_clone_picks_the_next_free_copy_name(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    batched = experiment.variants.get(name="batched")
    first = services.variant_clone(variant=batched)
    second = services.variant_clone(variant=batched)
    assert (first.name, second.name) == ("batched-copy", "batched-copy-2")
    assert first.max_batch_size == 8 and first.repeats == 2
    assert [v.name for v in experiment.variants.all()] == ["dedicated", "batched", "batched-copy", "batched-copy-2"]


def test_variant_clone_keeps_a_long_name_within_64_characters(user, spec_data):
    spec_data["variants"][0]["name"] = "v" * 64
    experiment = services.experiment_import(owner=user, data=spec_data)
    copy_ = services.variant_clone(variant=experiment.variants.get(name="v" * 64))
    assert copy_.name == "v" * 59 + "-copy"


def test_variant_clone_refuses_a_taken_or_invalid_name(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    batched = experiment.variants.get(name="batched")
    for name, message in (("dedicated", "already named"), ("no spaces", "letters, digits")):
        with pytest.raises(S.SpecError) as info:
            services.variant_clone(variant=batched, name=name)
        assert message in info.value.by_path()["name"][0]
    assert experiment.variants.count() == 2


def test_variant_clone_stops_at_the_variant_limit(user, spec_data):
    spec_data["variants"] = [{"name": f"v{i}"} for i in range(S.MAX_VARIANTS)]
    experiment = services.experiment_import(owner=user, data=spec_data)
    with pytest.raises(S.SpecError):
        services.variant_clone(variant=experiment.variants.first())


def test_deleting_an_experiment_removes_its_parts_trials_and_files(user, spec_data, media_root,
                                                                    django_capture_on_commit_callbacks):
    spec_data["workload"] = trace_workload(azure_trace([3, 3]))
    experiment = services.experiment_import(owner=user, data=spec_data)
    services.experiment_run(experiment=experiment, user=user)
    trace_path = Path(experiment.workloads.get().trace_file.path)
    with django_capture_on_commit_callbacks(execute=True):
        services.experiment_delete(experiment=experiment)
    assert nothing_saved()
    assert not trace_path.exists()


# ---- running ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,queue", [("auto", "pool.auto"), ("cpu", "pool.cpu"), ("cuda", "pool.cuda"),
                                          ("cuda:0", "pool.cuda-0"), ("cuda:12", "pool.cuda-12")])
def test_each_device_pool_has_its_own_queue(device, queue):
    assert services.device_queue(device) == queue


def test_an_unknown_device_has_no_queue():
    with pytest.raises(S.SpecError):
        services.device_queue("tpu")


def enqueued(callbacks) -> list[int]:
    """Trial ids the registered on-commit callbacks send (partials of services.trials_enqueue, one per run)."""
    assert all(cb.func is services.trials_enqueue for cb in callbacks)
    return [trial_id for cb in callbacks for trial_id in cb.keywords["trial_ids"]]


def test_a_run_creates_one_trial_per_variant_and_repeat_and_enqueues_them_on_commit(
        user, spec_data, django_capture_on_commit_callbacks):
    experiment = services.experiment_import(owner=user, data=spec_data)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        trials = services.experiment_run(experiment=experiment, user=user)
    assert [(t.variant_name, t.repeat, t.run_number) for t in trials] == [
        ("dedicated", 0, 1), ("batched", 0, 1), ("batched", 1, 1)]
    assert all(t.status == "queued" and t.queue == "pool.cpu" for t in trials)
    assert all(t.spec == spec_io.experiment_to_dict(experiment) for t in trials)
    assert all(t.variant.name == t.variant_name for t in trials)
    assert enqueued(callbacks) == [t.id for t in trials]


def test_nothing_is_enqueued_when_the_run_rolls_back(user, spec_data, django_capture_on_commit_callbacks):
    experiment = services.experiment_import(owner=user, data=spec_data)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                services.experiment_run(experiment=experiment, user=user)
                raise RuntimeError("the caller's transaction fails")
    assert callbacks == [] and not Trial.objects.exists()


def test_each_run_gets_the_next_run_number(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    services.experiment_run(experiment=experiment, user=user)
    second = services.experiment_run(experiment=experiment, user=user)
    assert {t.run_number for t in second} == {2}


def test_repeats_and_variant_names_narrow_a_run(user, spec_data, django_capture_on_commit_callbacks):
    experiment = services.experiment_import(owner=user, data=spec_data)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        trials = services.experiment_run(experiment=experiment, user=user, repeats=3, variant_names=["dedicated"])
    assert [(t.variant_name, t.repeat) for t in trials] == [("dedicated", 0), ("dedicated", 1), ("dedicated", 2)]
    assert len(enqueued(callbacks)) == 3


@pytest.mark.parametrize("kwargs,path", [({"repeats": 0}, "repeats"), ({"repeats": 21}, "repeats"),
                                         ({"repeats": True}, "repeats"), ({"variant_names": []}, "variants"),
                                         ({"variant_names": ["nope"]}, "variants")])
def test_a_bad_run_request_is_refused_and_queues_nothing(user, spec_data, kwargs, path,
                                                          django_capture_on_commit_callbacks):
    experiment = services.experiment_import(owner=user, data=spec_data)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(S.SpecError) as info:
            services.experiment_run(experiment=experiment, user=user, **kwargs)
    assert path in info.value.by_path()
    assert callbacks == [] and not Trial.objects.exists()


def test_a_stored_experiment_that_no_longer_validates_is_not_run(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    Function.objects.filter(experiment=experiment).update(model_key="retired-model")
    with pytest.raises(S.SpecError) as info:
        services.experiment_run(experiment=experiment, user=user)
    assert "functions[0].model" in info.value.by_path()
    assert not Trial.objects.exists()


def test_the_frozen_spec_does_not_change_when_the_experiment_is_edited(user, spec_data, price_catalogue):
    experiment = services.experiment_import(owner=user, data=spec_data)
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    frozen = copy.deepcopy(trial.spec)
    spec_data["workload"]["rate_rps"] = 99
    services.experiment_import(owner=user, data=spec_data, experiment=experiment)
    trial = Trial.objects.get(pk=trial.pk)
    assert trial.spec == frozen and trial.spec["workload"]["rate_rps"] == 20
    # The worker runs exactly the spec frozen at Run; the next run freezes the edited one beside it.
    assert trial_spec(trial).experiment.workloads[0].params["rate_rps"] == 20
    edited = services.experiment_run(experiment=experiment, user=user)[0]
    assert edited.run_spec_id != trial.run_spec_id and edited.spec["workload"]["rate_rps"] == 99
    assert trial_spec(Trial.objects.get(pk=trial.pk)).experiment.workloads[0].params["rate_rps"] == 20


def test_a_run_of_64_trials_stores_the_trace_text_once_and_each_trial_keeps_its_run_time(user, spec_data):
    trace = trace_of_about(256 * 1024)
    spec_data["workload"] = trace_workload(trace)
    spec_data["variants"] = [{"name": f"v{i:02d}", "repeats": 4, "max_instances": 1 + i % 4} for i in range(16)]
    experiment = services.experiment_import(owner=user, data=spec_data)
    trials = services.experiment_run(experiment=experiment, user=user, enqueue=False)
    assert len(trials) == 64
    stored = RunSpec.objects.get()  # one frozen spec for the run, every trial pointing at it
    assert {t.run_spec_id for t in trials} == {stored.id}
    assert stored.spec["workload"]["trace_content"] == trace and stored.size_bytes < len(trace) + 10_000
    # No trial row holds the trace, or any large value: the widest column of any row is the trace's 1/250th.
    widest = max(len(str(v)) for row in Trial.objects.values() for v in row.values())
    assert widest < len(trace) / 250
    # What the queue and the pages need is on the row, figured out from the frozen spec at Run.
    parsed = S.parse_experiment(stored.spec)
    assert {(t.run_s, t.expected_requests, t.time_limit_s) for t in trials} == {
        (12.0, S.trial_requests(parsed), services.trial_time_limits_s(12.0)[0])}
    assert S.trial_requests(parsed) > 0
    # A second run of the unchanged experiment finds the stored spec by its hash: still one copy.
    again = services.experiment_run(experiment=experiment, user=user, enqueue=False)
    assert {t.run_spec_id for t in again} == {stored.id} and RunSpec.objects.count() == 1


def test_a_trace_experiment_freezes_the_trace_text_into_the_trial(user, spec_data):
    spec_data["workload"] = trace_workload(azure_trace([2, 2]))
    experiment = services.experiment_import(owner=user, data=spec_data)
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    assert trial.spec["workload"]["trace_content"] == azure_trace([2, 2])
    assert S.parse_experiment(trial.spec).workloads[0].trace is not None


def test_a_gpu_experiment_is_queued_on_its_device_pool(user, spec_data):
    spec_data["device"] = "cuda:1"
    experiment = services.experiment_import(owner=user, data=spec_data)
    assert {t.queue for t in services.experiment_run(experiment=experiment, user=user)} == {"pool.cuda-1"}


# ---- cancelling ---------------------------------------------------------------------------------------------
def test_a_queued_trial_is_cancelled_at_once(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    trial = services.trial_cancel(trial=trial)
    assert trial.status == "cancelled" and trial.finished_at is not None


def test_a_running_trial_is_asked_to_stop_and_keeps_running(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    Trial.objects.filter(pk=trial.pk).update(status="running")
    trial = services.trial_cancel(trial=trial)
    assert trial.status == "running" and trial.cancel_requested


def test_a_trial_claimed_after_it_was_read_is_asked_to_stop_not_overwritten(user, spec_data):
    # The worker claims the trial between our read and our write: the conditional UPDATE sees "running".
    experiment = services.experiment_import(owner=user, data=spec_data)
    stale = services.experiment_run(experiment=experiment, user=user)[0]
    Trial.objects.filter(pk=stale.pk).update(status="running")
    assert stale.status == "queued"
    trial = services.trial_cancel(trial=stale)
    assert trial.status == "running" and trial.cancel_requested


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_a_finished_trial_is_left_as_it_is(user, spec_data, status):
    experiment = services.experiment_import(owner=user, data=spec_data)
    trial = services.experiment_run(experiment=experiment, user=user)[0]
    Trial.objects.filter(pk=trial.pk).update(status=status)
    trial = services.trial_cancel(trial=trial)
    assert trial.status == status and not trial.cancel_requested


def test_cancelling_an_experiment_cancels_queued_and_stops_running_trials(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    a, b, c = services.experiment_run(experiment=experiment, user=user)
    Trial.objects.filter(pk=a.pk).update(status="running")
    Trial.objects.filter(pk=b.pk).update(status="succeeded")
    assert services.experiment_cancel(experiment=experiment) == 2
    a.refresh_from_db(), b.refresh_from_db(), c.refresh_from_db()
    assert (a.status, a.cancel_requested) == ("running", True)
    assert (b.status, c.status) == ("succeeded", "cancelled")
    assert services.experiment_cancel(experiment=experiment) == 0
    assert selectors.experiment_status(experiment) == "running"


def test_a_run_for_an_inline_runner_is_created_but_enqueued_nowhere(user, spec_data,
                                                                     django_capture_on_commit_callbacks):
    experiment = services.experiment_import(owner=user, data=spec_data)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        trials = services.experiment_run(experiment=experiment, user=user, enqueue=False)
    assert len(trials) == 3 and {t.queue for t in trials} == {services.INLINE_QUEUE}
    assert callbacks == []
