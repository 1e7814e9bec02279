"""The zoo's cold starts are real: files on disk, deterministic bytes, real forward passes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from workers import zoo
from workers.zoo import ModelError

# A user factory living in this test module, registered by its dotted path like any user model.
FACTORY_PATH = f"{__name__}.tiny_user_model"


def tiny_user_model(input_shape, options):
    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], options.get("out", 3)), torch.nn.Tanh())


tiny_user_model.DEFAULT_INPUT_SHAPE = (5,)


@pytest.fixture
def model_dir(tmp_path):
    return tmp_path / "models"


@pytest.fixture
def user_model():
    zoo.register_user_models({"tiny-user": FACTORY_PATH})
    yield "tiny-user"
    zoo.unregister_user_models("tiny-user")


def test_model_keys_does_not_import_torch():
    code = "import sys, workers.zoo as z; z.model_keys(); z.default_input_shape('cnn-small'); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_builtin_keys_and_shapes():
    assert {"null", "mlp-small", "cnn-small", "transformer-small"} <= set(zoo.model_keys())
    assert zoo.default_input_shape("mlp-small") == (256,)
    assert zoo.default_input_shape("cnn-small") == (3, 32, 32)
    assert zoo.default_input_shape("transformer-small") == (32, 64)


def test_unknown_key_and_bad_inputs_raise_model_error(model_dir):
    with pytest.raises(ModelError, match="unknown model 'resnet-9000'"):
        zoo.load_model("resnet-9000", model_dir=model_dir)
    with pytest.raises(ModelError, match="1-D input"):
        zoo.ensure_weights("mlp-small", input_shape=(3, 4), model_dir=model_dir)
    with pytest.raises(ModelError, match="unknown option"):
        zoo.ensure_weights("mlp-small", options={"hiden": 3}, model_dir=model_dir)
    with pytest.raises(ModelError, match="divisible by heads"):
        zoo.ensure_weights("transformer-small", input_shape=(8, 30), model_dir=model_dir)


def test_weights_are_deterministic_bytes(tmp_path):
    a = zoo.ensure_weights("mlp-small", model_dir=tmp_path / "a")
    b = zoo.ensure_weights("mlp-small", model_dir=tmp_path / "b")
    assert a.name == b.name
    assert a.read_bytes() == b.read_bytes()
    # Different options -> different file and different bytes.
    c = zoo.ensure_weights("mlp-small", options={"hidden": 64}, model_dir=tmp_path / "a")
    assert c != a and c.read_bytes() != a.read_bytes()
    # No temporary files left behind by the atomic write.
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([a.name, c.name])


def test_ensure_weights_does_not_rewrite_existing(model_dir):
    p = zoo.ensure_weights("cnn-small", model_dir=model_dir)
    mtime = p.stat().st_mtime_ns
    assert zoo.ensure_weights("cnn-small", model_dir=model_dir) == p
    assert p.stat().st_mtime_ns == mtime


def test_building_weights_does_not_disturb_global_rng(model_dir):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    zoo.ensure_weights("transformer-small", model_dir=model_dir)
    zoo.load_model("transformer-small", model_dir=model_dir)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("key,out_shape", [
    ("mlp-small", (4, 10)),
    ("cnn-small", (4, 10)),
    ("transformer-small", (4, 10)),
])
def test_load_model_outputs_and_timings(model_dir, key, out_shape):
    m = zoo.load_model(key, model_dir=model_dir)
    assert m.weights_path.exists() and m.weights_bytes == m.weights_path.stat().st_size
    assert m.param_bytes > 0 and not m.module.training
    assert set(m.timings_ms) == {"build", "load", "to_device", "warmup", "total"}
    assert all(v >= 0 for v in m.timings_ms.values())
    parts = sum(v for k, v in m.timings_ms.items() if k != "total")
    assert m.timings_ms["total"] == pytest.approx(parts, rel=1e-6, abs=1e-6)
    with torch.inference_mode():
        y = m.module(zoo.make_batch(m, 4))
    assert tuple(y.shape) == out_shape
    assert torch.isfinite(y).all()


def test_loaded_weights_equal_file(model_dir):
    from safetensors.torch import load_file

    m = zoo.load_model("mlp-small", model_dir=model_dir)
    on_disk = load_file(str(m.weights_path))
    for name, tensor in m.module.state_dict().items():
        assert torch.equal(tensor, on_disk[name]), name


def test_two_cold_starts_give_identical_outputs(model_dir):
    a = zoo.load_model("cnn-small", model_dir=model_dir)
    b = zoo.load_model("cnn-small", model_dir=model_dir)
    with torch.inference_mode():
        assert torch.equal(a.module(zoo.make_batch(a, 3)), b.module(zoo.make_batch(b, 3)))


def test_null_returns_its_input(model_dir):
    m = zoo.load_model("null", model_dir=model_dir)
    assert m.weights_path.exists() and m.weights_bytes > 0
    x = zoo.make_batch(m, 8)
    assert tuple(x.shape) == (8, *zoo.default_input_shape("null"))
    with torch.inference_mode():
        assert torch.equal(m.module(x), x)


def test_make_batch_is_deterministic_and_sized(model_dir):
    m = zoo.load_model("mlp-small", model_dir=model_dir)
    small = zoo.make_batch(m, 2).clone()
    big = zoo.make_batch(m, 64)
    assert tuple(big.shape) == (64, 256)
    assert torch.equal(big[:2], small)
    with pytest.raises(ModelError):
        zoo.make_batch(m, 0)


def test_deleted_weights_are_rewritten(model_dir):
    p = zoo.ensure_weights("mlp-small", model_dir=model_dir)
    original = p.read_bytes()
    p.unlink()
    m = zoo.load_model("mlp-small", model_dir=model_dir)
    assert m.weights_path == p and p.read_bytes() == original


def test_corrupt_weights_fail_clearly(model_dir):
    p = zoo.ensure_weights("mlp-small", model_dir=model_dir)
    p.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelError, match="unreadable"):
        zoo.load_model("mlp-small", model_dir=model_dir)


def test_weights_that_do_not_match_fail_clearly(model_dir):
    from safetensors.torch import save_file

    p = zoo.ensure_weights("mlp-small", model_dir=model_dir)
    save_file({"0.weight": torch.zeros(2, 2)}, str(p))
    with pytest.raises(ModelError, match="does not match"):
        zoo.load_model("mlp-small", model_dir=model_dir)


def test_user_model_registration(model_dir, user_model):
    assert user_model in zoo.model_keys()
    assert zoo.default_input_shape(user_model) == (5,)
    m = zoo.load_model(user_model, options={"out": 7}, model_dir=model_dir)
    with torch.inference_mode():
        assert tuple(m.module(zoo.make_batch(m, 3)).shape) == (3, 7)
    assert zoo.estimate_memory_bytes(user_model, options={"out": 7}) > 0


def test_user_model_with_its_own_weights_file(tmp_path, user_model, monkeypatch):
    # A user's own file may be a plain torch state_dict; it is read with weights_only=True.
    monkeypatch.setenv("USER_WEIGHTS_DIR", str(tmp_path))
    own = tmp_path / "mine.pt"
    state = {"0.weight": torch.full((3, 5), 0.5), "0.bias": torch.zeros(3)}
    torch.save(state, own)
    m = zoo.load_model(user_model, options={"weights_path": str(own)}, model_dir=tmp_path / "models")
    assert m.weights_path == own
    assert torch.equal(m.module[0].weight, state["0.weight"])


def test_bad_user_model_paths():
    with pytest.raises(ModelError, match="cannot import module"):
        zoo.register_user_models({"x": "no_such_package_xyz.models.build"})
    with pytest.raises(ModelError, match="has no attribute"):
        zoo.register_user_models({"x": f"{__name__}.no_such_factory"})
    with pytest.raises(ModelError, match="not a dotted path"):
        zoo.register_user_models({"x": "justaname"})
    with pytest.raises(ModelError, match="clashes with a built-in"):
        zoo.register_user_models({"cnn-small": FACTORY_PATH})
    assert "x" not in zoo.model_keys()


def test_memory_estimate_grows_with_batch():
    one = zoo.estimate_memory_bytes("cnn-small", batch_size=1)
    many = zoo.estimate_memory_bytes("cnn-small", batch_size=64)
    assert many > one > 4 * 20_000  # cnn-small has ~24 k float32 parameters
    # Parameters alone must be counted: mlp-small has ~0.66 M float32 parameters.
    assert zoo.estimate_memory_bytes("mlp-small") > 2_500_000


def test_default_model_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    assert zoo.default_model_dir() == tmp_path
    monkeypatch.delenv("MODEL_DIR")
    assert zoo.default_model_dir().parts[-2:] == ("var", "models")


def test_concurrent_ensure_weights_leaves_one_complete_file(model_dir):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: zoo.ensure_weights("transformer-small", model_dir=model_dir), range(4)))
    assert len(set(paths)) == 1
    assert [p.name for p in model_dir.iterdir()] == [paths[0].name]
    zoo.load_model("transformer-small", model_dir=model_dir)


# ---- a user model's weights_path: only under USER_WEIGHTS_DIR -------------------------------------------------
def test_weights_path_is_refused_when_no_folder_is_configured(user_model, monkeypatch):
    monkeypatch.delenv("USER_WEIGHTS_DIR", raising=False)
    with pytest.raises(zoo.ModelError, match="no USER_WEIGHTS_DIR is configured") as exc:
        zoo.check_model(user_model, options={"weights_path": "/etc/passwd"})
    assert exc.value.option == "weights_path"


@pytest.mark.parametrize("value", ["/etc/passwd", "../outside.pt", "sub/../../outside.pt"])
def test_weights_path_outside_the_folder_is_refused(tmp_path, user_model, monkeypatch, value):
    monkeypatch.setenv("USER_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(zoo.ModelError, match="must name a file under"):
        zoo.check_model(user_model, options={"weights_path": value})


def test_a_symlink_inside_the_folder_pointing_out_is_refused(tmp_path, user_model, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "escape.pt").symlink_to(tmp_path / "secret.pt")
    monkeypatch.setenv("USER_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(zoo.ModelError, match="must name a file under"):
        zoo.check_model(user_model, options={"weights_path": "escape.pt"})


def test_a_relative_weights_path_is_read_from_the_folder(tmp_path, user_model, monkeypatch):
    monkeypatch.setenv("USER_WEIGHTS_DIR", str(tmp_path))
    torch.save({"0.weight": torch.full((3, 5), 0.25), "0.bias": torch.zeros(3)}, tmp_path / "mine.pt")
    m = zoo.load_model(user_model, options={"weights_path": "mine.pt"}, model_dir=tmp_path / "models")
    assert m.weights_path == (tmp_path / "mine.pt").resolve()
    assert float(m.module[0].weight[0, 0]) == 0.25


def test_the_worker_checks_again_where_it_reads(tmp_path, user_model, monkeypatch):
    # A spec validated while the folder was wider (or run from a file) is still refused at the cold start.
    monkeypatch.setenv("USER_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(zoo.ModelError, match="must name a file under"):
        zoo.weights_file(user_model, options={"weights_path": str(tmp_path / "other.pt")}, model_dir=tmp_path)
