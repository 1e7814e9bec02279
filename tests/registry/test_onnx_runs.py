"""ONNX models really run: an uploaded model end to end through `run_experiment --inline`, and one zoo model under
torch and ONNX Runtime as two variants of one experiment."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from controlplane.experiments.models import Trial

from .onnx_files import classifier

pytestmark = pytest.mark.django_db(transaction=True)


def run_inline(tmp_path, user, spec: dict) -> list[dict]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out_path = tmp_path / "results.json"
    call_command("run_experiment", str(path), "--inline", "--json", str(out_path), "--owner", user.username,
                 stdout=io.StringIO(), stderr=io.StringIO())
    return json.loads(out_path.read_text())["trials"]


def test_an_uploaded_onnx_model_runs_end_to_end_and_its_cold_starts_create_a_session(user, price_catalogue,
                                                                                        test_redis, media_root,
                                                                                        tmp_path):
    call_command("import_model", str(classifier(tmp_path / "clf.onnx")), "--name", "my-classifier", "--owner",
                 user.username, stdout=io.StringIO())
    rows = run_inline(tmp_path, user, {
        "name": "byom", "device": "cpu", "accelerator": "cpu", "slo": {"percentile": 99, "latency_ms": 200},
        "functions": [{"name": "classify", "model": "my-classifier"}],
        "workload": {"pattern": "poisson", "rate_rps": 20, "duration_s": 3, "seed": 7},
        "variants": [{"name": "scale-to-zero", "min_instances": 0, "keep_alive": {"ttl_s": 0.3}},
                     {"name": "batched", "batching": {"mode": "fixed", "max_batch_size": 8,
                                                      "max_queue_delay_ms": 5}}],
    })
    assert [(r["variant"], r["status"]) for r in rows] == [("scale-to-zero", "succeeded"), ("batched", "succeeded")]
    for row in rows:
        assert row["errors"] == 0 and row["completed"] == row["requests"] > 0
    trial = Trial.objects.get(variant_name="scale-to-zero")
    summary = trial.summary
    phases = summary["cold_start_phases_ms"]
    assert phases["count"] >= 1  # min 0 instances: a request paid a real cold start
    for name in ("process_start", "import", "load", "session", "warmup"):
        assert phases[name] is not None and phases[name] > 0, name
    assert phases["build"] is None and phases["to_device"] is None  # no torch module was built
    assert phases["page_cache_resident_max"] in (0.0, None)
    assert summary["hardware"]["model_runtimes"] == {"classify": "onnxruntime"}
    assert any("uploaded file, SHA-256" in n for n in summary["notes"])


def test_the_same_zoo_model_under_torch_and_onnxruntime_is_two_variants_of_one_experiment(user, price_catalogue,
                                                                                           test_redis, media_root,
                                                                                           tmp_path, settings):
    settings.MODEL_DIR = tmp_path / "models"
    rows = run_inline(tmp_path, user, {
        "name": "runtimes", "device": "cpu", "accelerator": "cpu", "slo": {"percentile": 99, "latency_ms": 200},
        "functions": [{"name": "classify", "model": "mlp-small"}],
        "workload": {"pattern": "poisson", "rate_rps": 20, "duration_s": 2, "seed": 7},
        "variants": [{"name": "torch", "min_instances": 0, "keep_alive": {"ttl_s": 5}},
                     {"name": "onnxruntime", "model_runtime": "onnxruntime", "min_instances": 0,
                      "keep_alive": {"ttl_s": 5}}],
    })
    assert [(r["variant"], r["status"], r["errors"]) for r in rows] == [("torch", "succeeded", 0),
                                                                      ("onnxruntime", "succeeded", 0)]
    by_variant = {t.variant_name: t.summary for t in Trial.objects.all()}
    torch_phases = by_variant["torch"]["cold_start_phases_ms"]
    ort_phases = by_variant["onnxruntime"]["cold_start_phases_ms"]
    assert torch_phases["build"] is not None and torch_phases["session"] is None
    assert ort_phases["session"] is not None and ort_phases["build"] is None
    assert by_variant["onnxruntime"]["hardware"]["model_runtimes"] == {"classify": "onnxruntime"}
    assert by_variant["torch"]["hardware"]["model_runtimes"] == {"classify": "torch"}
    # The export was made before the trial, beside the weights, and is reused.
    assert len(list((tmp_path / "models").glob("mlp-small-*.onnx"))) == 1
    print(f"\ncold start p50: torch {torch_phases['total']:.0f} ms (import {torch_phases['import']:.0f} ms), "
          f"onnxruntime {ort_phases['total']:.0f} ms (import {ort_phases['import']:.0f} ms)")


def test_an_uploaded_model_is_profiled_with_onnx_runtime_and_simulated_from_that_profile(user, test_redis,
                                                                                      media_root, tmp_path,
                                                                                      settings):
    from controlplane.experiments.models import Profile
    from controlplane.registry.models import Model

    settings.MODEL_DIR = tmp_path / "models"
    call_command("import_model", str(classifier(tmp_path / "clf.onnx", dynamic_batch=False)), "--name", "mine",
                 "--owner", user.username, stdout=io.StringIO())
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({
        "name": "byom sim", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 200},
        "functions": [{"name": "classify", "model": "mine"}],
        "workload": {"pattern": "poisson", "rate_rps": 20, "duration_s": 20, "seed": 7},
        "variants": [{"name": "dedicated"}]}))
    out = io.StringIO()
    call_command("simulate", str(path), "--short", "--owner", user.username, stdout=out, stderr=io.StringIO())
    print(out.getvalue())
    profile = Profile.objects.get()
    sha = Model.objects.get(name="mine").sha256
    # named by the file's bytes, owned by the model's owner, measured with ONNX Runtime instances at batch 1 only
    # (the file's batch dimension is fixed)
    assert profile.options == {"onnx_sha256": sha} and profile.owner == user
    assert profile.data["model_runtime"] == "onnxruntime" and profile.data["batch_sizes"] == [1]
    assert min(profile.data["cold_start_ms"]["session"]) > 0  # its cold starts created a session
    trial = Trial.objects.get()
    assert trial.status == Trial.Status.SUCCEEDED and trial.summary["simulated"] is True
    assert trial.summary["simulation"]["profiles"][0]["id"] == str(profile.code)
    # another user naming a model of the same name cannot reach this one's profile or file
    with pytest.raises(Exception, match="mine"):
        call_command("simulate", str(path), "--no-measure", "--owner", "someone-else", stdout=io.StringIO(),
                     stderr=io.StringIO())
