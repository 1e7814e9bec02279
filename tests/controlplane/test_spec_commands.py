"""import_spec / export_spec: spec files in and out from scripts and CI."""

import io
import json
from pathlib import Path

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from controlplane.experiments import services, spec_io
from controlplane.experiments.management.commands.import_spec import Command as ImportSpec
from controlplane.experiments.models import Experiment
from tests.controlplane.test_services import BAD_INPUTS, nothing_saved
from tests.controlplane.test_spec_io import EXAMPLES, azure_trace

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def write_spec(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def import_error(*args) -> str:
    with pytest.raises(CommandError) as info:
        run("import_spec", *args)
    return str(info.value)


# ---- import_spec --------------------------------------------------------------------------------------------
def test_import_prints_the_code_and_url_and_stores_the_experiment(user):
    out = run("import_spec", str(EXAMPLES / "classifier-poc.json"), "--owner", "owner")
    experiment = Experiment.objects.get()
    assert experiment.owner == user and experiment.variants.count() == 3
    assert f"code: {experiment.code}" in out
    assert f"url: http://localhost:8000/experiments/{experiment.code}/" in out
    assert out.startswith("created experiment 'classifier-poc' (3 variants) for owner")


def test_import_reads_yaml_and_the_trace_example_for_the_default_cli_owner(media_root):
    run("import_spec", str(EXAMPLES / "classifier-poc.yaml"))
    run("import_spec", str(EXAMPLES / "azure-trace-poc.json"), "--base-url", "https://bench.example/")
    owner = get_user_model().objects.get(username="cli")
    assert not owner.has_usable_password()
    assert sorted(Experiment.objects.filter(owner=owner).values_list("name", flat=True)) == [
        "azure-trace-poc", "classifier-poc"]
    trace = Experiment.objects.get(name="azure-trace-poc").workloads.get()
    assert trace.trace_content() == (EXAMPLES / "traces" / "azure2019-sample.csv").read_text()


def test_an_unknown_owner_is_refused_rather_than_created(spec_data, tmp_path):
    message = import_error(str(write_spec(tmp_path / "s.json", spec_data)), "--owner", "typo")
    assert "no user named 'typo'" in message
    assert nothing_saved() and not get_user_model().objects.filter(username="typo").exists()


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_spec_prints_each_problem_with_its_field_path_and_saves_nothing(user, spec_data, tmp_path, case):
    change, path = BAD_INPUTS[case]
    change(spec_data)
    message = import_error(str(write_spec(tmp_path / "s.json", spec_data)), "--owner", "owner")
    assert "invalid experiment spec, nothing saved" in message
    assert any(line.strip().startswith(f"{path}: ") for line in message.splitlines()), message
    assert nothing_saved()


def test_several_problems_are_printed_one_per_line(user, spec_data, tmp_path):
    spec_data["workload"]["duration_s"] = -1
    spec_data["functions"][0]["model"] = "nope"
    lines = import_error(str(write_spec(tmp_path / "s.json", spec_data)), "--owner", "owner").splitlines()
    assert lines[0].endswith("(2 problems):")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["functions[0].model", "workload.duration_s"]


def test_a_bad_spec_exits_with_a_non_zero_status(user, spec_data, tmp_path, capsys, monkeypatch):
    spec_data["slo"]["percentile"] = 97
    path = write_spec(tmp_path / "s.json", spec_data)
    # run_from_argv (what manage.py calls) closes the DB connections on its way out; the test still needs its own.
    monkeypatch.setattr("django.core.management.base.connections.close_all", lambda: None)
    with pytest.raises(SystemExit) as info:
        ImportSpec().run_from_argv(["manage.py", "import_spec", str(path), "--owner", "owner"])
    assert info.value.code == 1
    assert "slo.percentile: must be one of: 50, 90, 95, 99, 99.9" in capsys.readouterr().err
    assert nothing_saved()


def test_a_malformed_trace_file_is_reported_with_its_line_number(user, spec_data, tmp_path):
    lines = azure_trace([1, 2], [3, 4]).splitlines()
    lines[2] = lines[2].replace(",3,4,", ",3,4.5,", 1)
    (tmp_path / "t.csv").write_text("\n".join(lines))
    spec_data["workload"] = {"pattern": "trace", "trace_format": "azure2019", "trace_path": "t.csv",
                             "duration_s": 120}
    message = import_error(str(write_spec(tmp_path / "s.json", spec_data)), "--owner", "owner")
    assert "workload.trace_content: line 3: minute 2 is '4.5', not a whole number" in message
    assert nothing_saved()


def test_an_oversized_or_missing_trace_file_names_trace_path(user, spec_data, tmp_path):
    from workers.spec import MAX_TRACE_BYTES

    with open(tmp_path / "big.csv", "wb") as fh:
        fh.truncate(MAX_TRACE_BYTES + 1)
    spec_data["workload"] = {"pattern": "trace", "trace_format": "timestamps", "trace_path": "big.csv",
                             "duration_s": 60}
    assert "workload.trace_path: 'big.csv' is 8.0 MiB" in import_error(
        str(write_spec(tmp_path / "s.json", spec_data)), "--owner", "owner")
    spec_data["workload"]["trace_path"] = "missing.csv"
    assert "workload.trace_path: cannot read 'missing.csv'" in import_error(
        str(write_spec(tmp_path / "s.json", spec_data)), "--owner", "owner")
    assert nothing_saved()


def test_a_spec_file_that_is_not_json_or_yaml_is_reported(user, tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"name": "x",,}')
    assert "(spec): not valid JSON" in import_error(str(path), "--owner", "owner")


def test_update_replaces_the_experiment_and_keeps_its_code(user, spec_data, tmp_path):
    experiment = services.experiment_import(owner=user, data=spec_data)
    spec_data["name"] = "second"
    out = run("import_spec", str(write_spec(tmp_path / "s.json", spec_data)), "--owner", "owner",
              "--update", str(experiment.code))
    assert out.startswith("updated experiment 'second'")
    assert Experiment.objects.get().code == experiment.code and Experiment.objects.get().name == "second"


def test_update_of_someone_elses_or_an_unknown_experiment_is_refused(user, other_user, spec_data, tmp_path):
    theirs = services.experiment_import(owner=other_user, data=spec_data)
    path = str(write_spec(tmp_path / "s.json", dict(spec_data, name="hijack")))
    assert "no experiment" in import_error(path, "--owner", "owner", "--update", str(theirs.code))
    assert "no experiment" in import_error(path, "--owner", "owner", "--update", "not-a-code")
    assert Experiment.objects.get().name == "classifier-poc"


# ---- export_spec --------------------------------------------------------------------------------------------
def test_export_writes_the_canonical_json_to_stdout(user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    assert json.loads(run("export_spec", str(experiment.code))) == spec_io.experiment_to_dict(experiment)


def test_export_writes_yaml_by_flag_or_by_file_name(user, spec_data, tmp_path):
    experiment = services.experiment_import(owner=user, data=spec_data)
    expected = spec_io.experiment_to_dict(experiment)
    assert yaml.safe_load(run("export_spec", str(experiment.code), "--yaml")) == expected
    run("export_spec", str(experiment.code), "-o", str(tmp_path / "out.yml"))
    assert yaml.safe_load((tmp_path / "out.yml").read_text()) == expected


def test_import_export_import_gives_the_same_experiment_including_a_trace(tmp_path, media_root):
    first_out = run("import_spec", str(EXAMPLES / "azure-trace-poc.json"))
    code = first_out.split("code: ")[1].split()[0]
    run("export_spec", code, "-o", str(tmp_path / "exported.json"))
    exported = json.loads((tmp_path / "exported.json").read_text())
    second_out = run("import_spec", str(tmp_path / "exported.json"))
    second = Experiment.objects.get(code=second_out.split("code: ")[1].split()[0])
    assert spec_io.experiment_to_dict(second) == exported
    assert exported["workload"]["trace_content"] == (EXAMPLES / "traces" / "azure2019-sample.csv").read_text()
    assert exported == spec_io.experiment_to_dict(Experiment.objects.get(code=code))


def test_export_of_an_unknown_code_is_refused():
    for code in ("not-a-uuid", "0b5c3b47-9d1c-4f5e-9a43-1c4f0e2b7a10"):
        with pytest.raises(CommandError, match="no experiment with code"):
            run("export_spec", code)
