"""Trusted torch models from installed packages: found through the `slsbench.models` entry-point group, run in
an instance process; weights files whose loader can run code are refused."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from workers import spec as S
from workers import zoo
from workers.engine import run_trial

KEY = "tiny-installed"


def install(folder: Path, weights_name: str = "tiny.safetensors") -> Path:
    """A package installed the way pip leaves one: a module and a .dist-info with entry_points.txt."""
    (folder / "slsbench_tiny_models.py").write_text(textwrap.dedent(f'''
        from pathlib import Path

        from torch import nn


        class Tiny:
            DEFAULT_INPUT_SHAPE = (8,)
            weights_path = str(Path(__file__).with_name("{weights_name}"))

            @staticmethod
            def factory(input_shape, options):
                return nn.Sequential(nn.Linear(input_shape[0], 4), nn.ReLU(), nn.Linear(4, 2))


        tiny = Tiny()
    '''))
    info = folder / "slsbench_tiny_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slsbench-tiny-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[slsbench.models]\n{KEY} = slsbench_tiny_models:tiny\n")
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "tiny.safetensors"))
    return folder / weights_name


@pytest.fixture
def installed(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("slsbench_tiny_models", None)  # each test installs its own version of the package
    yield site
    zoo.unregister_user_models(KEY)
    sys.modules.pop("slsbench_tiny_models", None)


def test_an_installed_entry_point_model_is_found_and_runs_in_an_instance_process(installed, tmp_path):
    weights = install(installed)
    assert zoo.discover_entry_points() == {KEY: "slsbench_tiny_models:tiny"}
    assert KEY in zoo.model_keys() and zoo.default_input_shape(KEY) == (8,)
    assert zoo.weights_file(KEY, model_dir=tmp_path) == weights
    exp = S.parse_experiment({
        "name": "installed", "device": "cpu", "functions": [{"name": "f", "model": KEY}],
        "workload": {"pattern": "constant", "rate_rps": 20, "duration_s": 1},
        "variants": [{"name": "scale-to-zero", "min_instances": 0}]})
    result = run_trial(S.TrialSpec(exp, exp.variants[0]), model_dir=tmp_path / "models")
    assert result.status == "succeeded" and result.summary["errors"] == 0
    phases = result.summary["cold_start_phases_ms"]
    assert phases["count"] >= 1 and phases["load"] is not None
    assert phases["weights_bytes"] == weights.stat().st_size  # the package's own file was read


@pytest.mark.parametrize(("name", "reason"), [("tiny.pt2", "torch.export archive"), ("tiny.pkl", "a pickle")])
def test_weights_whose_loader_can_run_code_are_refused_at_registration(installed, name, reason):
    install(installed, weights_name=name)
    with pytest.raises(zoo.ModelError, match=reason):
        zoo.discover_entry_points()
    assert KEY not in zoo.model_keys()


def test_a_pickled_module_is_refused_even_under_an_innocent_name(installed, tmp_path):
    install(installed, weights_name="tiny.pt")
    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
               installed / "tiny.pt")  # the whole module pickled, not a state_dict
    zoo.discover_entry_points()
    with pytest.raises(zoo.ModelError, match="unreadable"):
        zoo.load_model(KEY, model_dir=tmp_path)
