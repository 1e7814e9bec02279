"""Spec files in and out: JSON and YAML, traces read beside the spec, and export -> import round trips."""

import json
from pathlib import Path

import pytest

from controlplane.experiments import services, spec_io
from controlplane.experiments.models import Experiment
from workers import spec as S

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MINUTES = 1440


def azure_trace(*rows: list[int], hashes: list[str] | None = None) -> str:
    """An Azure Functions 2019 per-minute trace: header, then one row of counts per function."""
    head = ["HashOwner", "HashApp", "HashFunction", "Trigger"] + [str(m) for m in range(1, MINUTES + 1)]
    lines = [",".join(head)]
    for i, counts in enumerate(rows):
        fh = hashes[i] if hashes else f"f{i}"
        lines.append(",".join(["o", "a", fh, "http"] + [str(c) for c in counts] + ["0"] * (MINUTES - len(counts))))
    return "\n".join(lines) + "\n"


def trace_spec(spec_data: dict, trace_dir: Path, content: str, name: str = "trace.csv") -> dict:
    (trace_dir / name).write_text(content)
    spec_data["workload"] = {"pattern": "trace", "trace_format": "azure2019", "trace_path": name,
                             "duration_s": 120, "time_compression": 10, "seed": 3}
    return spec_data


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def errors_of(call) -> dict[str, list[str]]:
    with pytest.raises(S.SpecError) as info:
        call()
    return info.value.by_path()


# ---- reading spec files -------------------------------------------------------------------------------------
def test_the_json_and_yaml_examples_describe_the_same_experiment():
    from_json = S.parse_experiment(spec_io.load_spec_file(EXAMPLES / "classifier-poc.json"))
    from_yaml = S.parse_experiment(spec_io.load_spec_file(EXAMPLES / "classifier-poc.yaml"))
    assert from_json == from_yaml
    assert [v.name for v in from_json.variants] == ["dedicated", "batched", "scale-to-zero"]


def test_the_trace_example_reads_its_committed_trace_beside_it():
    data = spec_io.load_spec_file(EXAMPLES / "azure-trace-poc.json")
    workload = data["workload"]
    assert "trace_path" not in workload
    assert workload["trace_filename"] == "azure2019-sample.csv"
    assert workload["trace_content"].startswith("HashOwner,HashApp,HashFunction,Trigger,1,2,3")
    spec = S.parse_experiment(data)
    assert spec.workloads[0].trace.format == "azure2019"


def test_the_committed_trace_has_the_azure_layout_and_about_ten_minutes_of_traffic():
    from workers.workload import parse_trace

    text = (EXAMPLES / "traces" / "azure2019-sample.csv").read_text()
    assert all(len(line.split(",")) == 1444 for line in text.splitlines())
    counts = parse_trace(text, "azure2019").counts_per_min
    busy = [m for m, c in enumerate(counts) if c > 0]
    assert busy and max(busy) < 12
    assert len(text.encode()) < 64 * 1024


def test_a_yaml_file_without_a_yaml_extension_is_still_read(tmp_path, spec_data):
    import yaml

    path = tmp_path / "spec.txt"
    path.write_text(yaml.safe_dump(spec_data))
    assert spec_io.load_spec_file(path) == spec_data


def test_a_json_typo_is_reported_with_its_line(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{\n  "name": "x",\n  "functions": [\n}\n')
    errors = errors_of(lambda: spec_io.load_spec_file(path))
    assert "not valid JSON" in errors[""][0] and "line 4" in errors[""][0]


def test_a_yaml_typo_is_reported_with_its_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nfunctions:\n  - name: [unclosed\n")
    errors = errors_of(lambda: spec_io.load_spec_file(path))
    assert "not valid YAML" in errors[""][0] and "line" in errors[""][0]


def test_a_missing_spec_file_is_a_spec_error(tmp_path):
    errors = errors_of(lambda: spec_io.load_spec_file(tmp_path / "nope.json"))
    assert "cannot read spec file" in errors[""][0]


def test_a_trace_path_is_read_relative_to_the_spec_file(tmp_path, spec_data):
    (tmp_path / "sub").mkdir()
    content = azure_trace([5, 6, 7])
    trace_spec(spec_data, tmp_path / "sub", content)
    spec_data["workload"]["trace_path"] = "sub/trace.csv"
    data = spec_io.load_spec_file(write(tmp_path / "spec.json", spec_data))
    assert data["workload"]["trace_content"] == content
    assert data["workload"]["trace_filename"] == "trace.csv"


def test_a_missing_trace_file_names_the_trace_path_field(tmp_path, spec_data):
    spec_data["workloads"] = [{"pattern": "trace", "trace_format": "azure2019", "trace_path": "gone.csv",
                               "duration_s": 60}]
    del spec_data["workload"]
    errors = errors_of(lambda: spec_io.load_spec_file(write(tmp_path / "spec.json", spec_data)))
    assert "cannot read 'gone.csv'" in errors["workloads[0].trace_path"][0]


def test_an_oversized_trace_file_names_the_trace_path_field_without_reading_it(tmp_path, spec_data):
    trace_spec(spec_data, tmp_path, "")
    with open(tmp_path / "trace.csv", "wb") as fh:  # sparse: the size is what matters
        fh.truncate(S.MAX_TRACE_BYTES + 1)
    errors = errors_of(lambda: spec_io.load_spec_file(write(tmp_path / "spec.json", spec_data)))
    assert "at most 8 MiB" in errors["workload.trace_path"][0]


def test_a_trace_path_and_trace_content_together_are_refused(tmp_path, spec_data):
    trace_spec(spec_data, tmp_path, azure_trace([1]))
    spec_data["workload"]["trace_content"] = azure_trace([2])
    errors = errors_of(lambda: spec_io.load_spec_file(write(tmp_path / "spec.json", spec_data)))
    assert "not both" in errors["workload.trace_path"][0]


def test_a_malformed_trace_row_is_reported_with_its_line_number(tmp_path, spec_data):
    bad = azure_trace([1, 2], [3, 4]).splitlines()
    bad[2] = bad[2].replace(",3,4,", ",3,x,", 1)
    trace_spec(spec_data, tmp_path, "\n".join(bad))
    data = spec_io.load_spec_file(write(tmp_path / "spec.json", spec_data))
    errors = errors_of(lambda: S.parse_experiment(data))
    assert errors["workload.trace_content"] == ["line 3: minute 2 is 'x', not a whole number"]


# ---- database <-> spec --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_export_then_import_then_export_gives_the_same_dict(user, spec_data, media_root):
    spec_data["slo"]["min_throughput_rps"] = 5
    spec_data["functions"].append({"name": "embed", "model": "null", "input_shape": [32], "weight": 3,
                                   "options": {}})
    spec_data["variants"].append({"name": "shared", "sharing": "spatial", "share": 0.25, "min_instances": 0,
                                  "max_instances": 4, "target_concurrency": 2,
                                  "batching": {"mode": "adaptive", "max_batch_size": 32, "max_queue_delay_ms": 20,
                                               "shed": True},
                                  "keep_alive": {"policy": "histogram", "ttl_s": 30, "bin_s": 0.5, "range_s": 60,
                                                 "head_percentile": 5, "tail_percentile": 99, "min_samples": 8}})
    first = services.experiment_import(owner=user, data=spec_data)
    exported = spec_io.experiment_to_dict(first)
    second = services.experiment_import(owner=user, data=json.loads(json.dumps(exported)))
    assert spec_io.experiment_to_dict(second) == exported
    assert S.parse_experiment(exported) == S.parse_experiment(spec_data)


@pytest.mark.django_db
def test_a_trace_workload_survives_the_round_trip_with_its_text(tmp_path, user, spec_data, media_root):
    content = azure_trace([10, 20, 30], [1, 0, 2], hashes=["keep", "other"])
    trace_spec(spec_data, tmp_path, content, name="day one.csv")
    spec_data["workload"]["function_hash"] = "keep"
    spec_data["workload"]["cv"] = 1.5
    experiment = services.experiment_import(owner=user, data=spec_io.load_spec_file(write(tmp_path / "s.json",
                                                                                           spec_data)))
    exported = spec_io.experiment_to_dict(experiment)
    w = exported["workload"]
    assert (w["trace_content"], w["trace_filename"], w["function_hash"], w["cv"]) == (content, "day one.csv",
                                                                                       "keep", 1.5)
    # stored as a file under MEDIA_ROOT, not in a row
    stored = experiment.workloads.get()
    assert Path(stored.trace_file.path).is_relative_to(media_root) and stored.trace_file.name.endswith(".csv")
    again = services.experiment_import(owner=user, data=exported)
    assert spec_io.experiment_to_dict(again) == exported


@pytest.mark.django_db
def test_experiment_to_spec_names_the_price_entry_or_none(user, spec_data):
    with_price = services.experiment_import(owner=user, data=spec_data)
    del spec_data["accelerator"]
    without = services.experiment_import(owner=user, data=spec_data)
    assert spec_io.experiment_to_spec(with_price).accelerator == "cpu"
    assert spec_io.experiment_to_spec(without).accelerator is None


@pytest.mark.django_db
def test_per_function_workloads_come_back_in_their_order_and_targets(user, spec_data):
    spec_data["functions"] = [{"name": "a", "model": "null"}, {"name": "b", "model": "mlp-small"}]
    spec_data["workloads"] = [{"pattern": "constant", "rate_rps": 3, "duration_s": 5, "function": "b"},
                              {"pattern": "steps", "steps": [[0, 1], [2, 4]], "duration_s": 5, "function": "a"}]
    del spec_data["workload"]
    experiment = services.experiment_import(owner=user, data=spec_data)
    exported = spec_io.experiment_to_dict(experiment)
    assert [(w["function"], w["pattern"]) for w in exported["workloads"]] == [("b", "constant"), ("a", "steps")]
    assert exported["workloads"][1]["steps"] == [[0.0, 1.0], [2.0, 4.0]]
    assert Experiment.objects.count() == 1


@pytest.mark.django_db
def test_a_stored_variants_runtime_and_modelled_delay_are_in_its_spec_and_export(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    experiment.variants.filter(name="batched").update(runtime="thread", platform_delay_ms=25_000)
    variant = next(v for v in spec_io.experiment_to_spec(experiment).variants if v.name == "batched")
    assert (variant.runtime, variant.platform_delay_ms, variant.isolation) == ("thread", 25_000.0, "none")
    exported = spec_io.experiment_to_dict(experiment)
    rows = {v["name"]: v for v in exported["variants"]}
    assert (rows["batched"]["runtime"], rows["batched"]["platform_delay_ms"]) == ("thread", 25_000.0)
    assert (rows["dedicated"]["runtime"], rows["dedicated"]["platform_delay_ms"]) == ("process", 0.0)
    assert S.parse_experiment(exported).variants[1] == variant


def test_the_examples_run_in_processes_with_no_modelled_delay():
    for name in ("classifier-poc.json", "classifier-poc.yaml", "azure-trace-poc.json"):
        spec = S.parse_experiment(spec_io.load_spec_file(EXAMPLES / name))
        assert {(v.runtime, v.platform_delay_ms) for v in spec.variants} == {("process", 0.0)}, name


def test_dump_spec_writes_json_or_yaml_that_reads_back(spec_data, tmp_path):
    for as_yaml, suffix in ((False, ".json"), (True, ".yaml")):
        path = tmp_path / f"out{suffix}"
        path.write_text(spec_io.dump_spec(spec_data, as_yaml=as_yaml))
        assert spec_io.load_spec_file(path) == spec_data


# ---- docs/spec.md stays in step with the validator -----------------------------------------------------------
DOC = (EXAMPLES.parent / "docs" / "spec.md").read_text()


def test_the_spec_doc_embeds_the_classifier_example_verbatim():
    example = (EXAMPLES / "classifier-poc.json").read_text().strip()
    assert f"```json\n{example}\n```" in DOC


def test_the_spec_doc_names_every_field_pattern_and_mode():
    names = set(S.EXPERIMENT_KEYS) | {"percentile", "latency_ms", "max_violation_rate", "min_throughput_rps",
                                      "input_shape", "options", "weight", "share", "target_concurrency",
                                      "max_batch_size", "max_queue_delay_ms", "shed", "ttl_s", "bin_s", "range_s",
                                      "head_percentile", "tail_percentile", "min_samples", "repeats",
                                      "time_compression", "seed", "runtime", "platform_delay_ms"}
    for params in S.PATTERN_PARAMS.values():
        names |= set(params)
    names |= set(S.PATTERNS) | set(S.TRACE_FORMATS) | set(S.SHARING_MODES) | set(S.BATCHING_MODES)
    names |= set(S.KEEP_ALIVE_POLICIES) | set(S.RUNTIMES)
    missing = sorted(n for n in names if f"`{n}`" not in DOC)
    assert not missing, missing


def test_the_spec_doc_states_every_bound_with_its_current_value():
    rows = {}
    for line in DOC.split("## Limits", 1)[1].split("##", 1)[0].splitlines():
        cells = [c.strip(" `") for c in line.strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("MAX_"):
            rows[cells[0]] = cells[1]
    constants = {k: getattr(S, k) for k in dir(S) if k.startswith("MAX_")}
    assert set(rows) == set(constants)
    for name, value in constants.items():
        shown = rows[name].split()[0]
        if name == "MAX_TRACE_BYTES":
            assert f"({value} bytes)" in rows[name]
        else:
            assert float(shown) == value, (name, shown, value)


def test_the_workload_examples_in_the_spec_doc_are_valid():
    block = DOC.split("Examples:\n\n```json\n", 1)[1].split("```", 1)[0]
    workloads = [json.loads(line) for line in block.strip().splitlines()]
    assert [w["pattern"] for w in workloads] == ["gamma", "steps", "diurnal", "burst"]
    for w in workloads:
        S.parse_workload(w)
    multi = DOC.split("A workload with several functions:\n\n```json\n", 1)[1].split("```", 1)[0]
    fragment = json.loads("{" + multi.strip() + "}")
    S.parse_experiment({"name": "doc", "variants": [{"name": "v"}], **fragment})
