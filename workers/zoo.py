"""Model zoo: small, deterministic PyTorch models whose cold starts are real.

A cold start here does what a serving system does: build the module skeleton, read a weights file
from disk (safetensors, never pickle), move the weights to the device and run one warm-up pass. The
weights are random but deterministic: they are generated once per (model, input shape, options) with
a fixed seed and written to `model_dir`, so every cold start after the first reads the same bytes.

`model_keys` and `default_input_shape` for built-ins must stay cheap and must not import torch: the
web process calls them while validating specs. Torch is imported inside the functions that need it.

Trusted torch models of one's own come in two ways, both registered under a key by `register_user_models`:

- an installed package's entry point in the group `slsbench.models` (`discover_entry_points`, called at
  start-up): the entry point names an object with `factory(input_shape, options) -> nn.Module` and
  `weights_path` (the file its cold starts read), optionally `DEFAULT_INPUT_SHAPE`;
- settings.USER_MODELS, {"key": "package.module.factory"} (or a "package.module:object" like an entry point's).

Weights load only through safetensors or `torch.load(weights_only=True)` (tensors, no code). torch.export
archives (.pt2) and pickled modules are refused: loading them can run code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only; torch is imported lazily at run time
    import torch

# Bump when a built-in architecture or the weight generation changes: it is part of the file name, so
# old files are never read into a changed skeleton.
ZOO_VERSION = 1
WEIGHTS_SEED = 20_240_601
INPUT_SEED = 7

BUILTIN_SHAPES: dict[str, tuple[int, ...]] = {
    "null": (16,),
    "mlp-small": (256,),
    "cnn-small": (3, 32, 32),
    "transformer-small": (32, 64),
    # BERT-base-sized: 12 layers of width 768, 12 heads, feed-forward 3072, a 30,522-way output head;
    # about 109 M parameters, 436 MB of float32 weights: what loading a realistic model costs.
    "transformer-base": (32, 768),
}
# Options each built-in accepts, with defaults; anything else is refused so a typo is not silently ignored.
BUILTIN_OPTIONS: dict[str, dict[str, int]] = {
    "null": {},
    "mlp-small": {"hidden": 512, "layers": 3, "classes": 10},
    "cnn-small": {"width": 16, "classes": 10},
    "transformer-small": {"layers": 2, "heads": 4, "ff": 128, "classes": 10},
    "transformer-base": {"layers": 12, "heads": 12, "ff": 3072, "classes": 30522},
}
USER_WEIGHTS_OPTION = "weights_path"  # user models may point at their own weights file
ENTRY_POINT_GROUP = "slsbench.models"
# Files whose loader can run code: never read, whoever names them.
REFUSED_WEIGHT_SUFFIXES = {".pt2": "a torch.export archive", ".pkl": "a pickle", ".pickle": "a pickle"}
# The only folder a user model's weights_path may name (relative paths are taken from it). From the
# environment, so the instance processes a worker starts see the same folder; unset: no weights_path at all.
USER_WEIGHTS_DIR_ENV = "USER_WEIGHTS_DIR"

_user_models: dict[str, Callable[..., Any]] = {}
_user_paths: dict[str, str] = {}
_user_weights: dict[str, str] = {}  # key -> weights file of an entry-point model (its `weights_path`)
_registry_lock = threading.Lock()


class ModelError(Exception):
    """Unknown model key, input shape the model cannot take, bad options, unreadable weights. `option` names
    the option at fault when there is one, so a spec error can name its field."""

    def __init__(self, message: str, *, option: str | None = None):
        super().__init__(message)
        self.option = option


# ---- keys and shapes (no torch) ----------------------------------------------------------------------
def model_keys() -> list[str]:
    """Built-in keys followed by registered user models. Does not import torch."""
    with _registry_lock:
        return list(BUILTIN_SHAPES) + sorted(_user_models)


def register_user_models(mapping: dict[str, str]) -> None:
    """Register user models: key -> dotted path of a factory `factory(input_shape, options) -> nn.Module`.

    The path is `package.module.factory` (or `package.module:factory`). The code is trusted: it is
    imported here. A factory may carry `DEFAULT_INPUT_SHAPE`. Raises ModelError if a path does not
    import or a key clashes with a built-in; nothing is registered unless every entry is valid.
    """
    resolved: dict[str, tuple[Callable[..., Any], str | None]] = {}
    for key, path in mapping.items():
        if not isinstance(key, str) or not key or len(key) > 100:
            raise ModelError(f"user model key {key!r} must be a non-empty string of at most 100 characters")
        if key in BUILTIN_SHAPES:
            raise ModelError(f"user model {key!r} clashes with a built-in model of that name")
        resolved[key] = _import_factory(key, path)
    with _registry_lock:
        _user_models.update({k: f for k, (f, _w) in resolved.items()})
        _user_paths.update({k: mapping[k] for k in resolved})
        for k, (_f, weights) in resolved.items():
            if weights:
                _user_weights[k] = weights
            else:
                _user_weights.pop(k, None)


def discover_entry_points() -> dict[str, str]:
    """Register the models installed packages declare in the `slsbench.models` entry-point group; return them as
    key -> "module:object" (what a child process registers again). A broken entry point raises ModelError."""
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if found:
        register_user_models(found)
    return found


def user_model_paths() -> dict[str, str]:
    """Registered user models as key -> dotted factory path (to repeat the registration in a child process)."""
    with _registry_lock:
        return dict(_user_paths)


def unregister_user_models(*keys: str) -> None:
    """Forget user models (all of them when no key is given). Mostly for tests."""
    with _registry_lock:
        for key in keys or list(_user_models):
            _user_models.pop(key, None)
            _user_paths.pop(key, None)
            _user_weights.pop(key, None)


def _import_factory(key: str, path: str) -> tuple[Callable[..., Any], str | None]:
    """The factory a dotted path names, and the weights file when the path names a model object (an entry point's
    kind: `factory` + `weights_path`) rather than a bare factory."""
    if not isinstance(path, str) or not path.strip():
        raise ModelError(f"user model {key!r}: factory path must be a dotted path such as 'mypkg.models.build'")
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ModelError(f"user model {key!r}: {path!r} is not a dotted path to a factory "
                         "(expected 'package.module.factory')")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of trusted user code is reported the same way
        raise ModelError(f"user model {key!r}: cannot import module {module_name!r} from {path!r}: "
                         f"{type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelError(f"user model {key!r}: module {module_name!r} has no attribute {attr!r}")
    weights = None
    if hasattr(factory, "factory"):  # a model object: factory + weights_path (+ DEFAULT_INPUT_SHAPE)
        obj = factory
        weights = getattr(obj, "weights_path", None)
        if not weights:
            raise ModelError(f"user model {key!r}: {path!r} has a factory but no weights_path")
        weights = str(weights)
        _refuse_unsafe_weights(key, Path(weights))
        factory = obj.factory
        if getattr(obj, "DEFAULT_INPUT_SHAPE", None) is not None and not hasattr(factory, "DEFAULT_INPUT_SHAPE"):
            shape = obj.DEFAULT_INPUT_SHAPE
            inner = factory

            def factory(input_shape, options, _inner=inner):  # carries the object's default shape
                return _inner(input_shape, options)

            factory.DEFAULT_INPUT_SHAPE = shape
    if not callable(factory):
        raise ModelError(f"user model {key!r}: {path!r} is not callable")
    return factory, weights


def _refuse_unsafe_weights(key: str, path: Path) -> None:
    kind = REFUSED_WEIGHT_SUFFIXES.get(path.suffix.lower())
    if kind:
        raise ModelError(f"user model {key!r}: weights file {path.name} is {kind}, whose loader can run code; "
                         "save a state_dict with safetensors (or torch.save of tensors only)")


def _user_factory(key: str) -> Callable[..., Any] | None:
    with _registry_lock:
        return _user_models.get(key)


def _check_key(key: str) -> None:
    if key not in BUILTIN_SHAPES and _user_factory(key) is None:
        raise ModelError(f"unknown model {key!r} (known: {', '.join(model_keys())})")


def default_input_shape(key: str) -> tuple[int, ...]:
    """Per-sample input shape (no batch dimension) a model takes when the function gives none."""
    _check_key(key)
    if key in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[key]
    shape = getattr(_user_factory(key), "DEFAULT_INPUT_SHAPE", None)
    if shape is None:
        raise ModelError(f"user model {key!r} has no DEFAULT_INPUT_SHAPE; give the function an input_shape")
    return _as_shape(shape, key)


def _as_shape(shape: Any, key: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in shape)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {key!r}: input shape {shape!r} is not a sequence of whole numbers") from exc
    if not out or any(x < 1 for x in out):
        raise ModelError(f"model {key!r}: input shape {shape!r} must be 1 or more positive sizes")
    return out


def _resolve(key: str, input_shape: Any, options: dict | None) -> tuple[tuple[int, ...], dict]:
    """Validate key, shape and options for a built-in (user factories validate their own)."""
    _check_key(key)
    shape = default_input_shape(key) if input_shape is None else _as_shape(input_shape, key)
    opts = dict(options or {})
    if key in BUILTIN_SHAPES:
        allowed = BUILTIN_OPTIONS[key]
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise ModelError(f"model {key!r}: unknown option(s) {', '.join(unknown)} (accepted: {known})")
        for name, value in opts.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65536:
                raise ModelError(f"model {key!r}: option {name} must be a whole number between 1 and 65536")
        opts = {**allowed, **opts}
        _check_builtin_shape(key, shape, opts)
    elif USER_WEIGHTS_OPTION in opts:
        user_weights_file(key, opts[USER_WEIGHTS_OPTION])
    return shape, opts


def user_weights_file(key: str, value: Any) -> Path:
    """A user model's own weights file, which must lie under USER_WEIGHTS_DIR once symlinks and `..` are
    resolved: the spec is user input, and the worker would read whatever file it names."""
    if not isinstance(value, str) or not value.strip():
        raise ModelError(f"model {key!r}: option {USER_WEIGHTS_OPTION} must be a file path",
                         option=USER_WEIGHTS_OPTION)
    root = os.environ.get(USER_WEIGHTS_DIR_ENV)
    if not root:
        raise ModelError(f"model {key!r}: option {USER_WEIGHTS_OPTION} is refused: no {USER_WEIGHTS_DIR_ENV} is "
                         "configured for user weights", option=USER_WEIGHTS_OPTION)
    base = Path(root).resolve()
    path = (base / value).resolve()  # an absolute value replaces base
    if not path.is_relative_to(base):
        raise ModelError(f"model {key!r}: option {USER_WEIGHTS_OPTION} must name a file under {base}",
                         option=USER_WEIGHTS_OPTION)
    return path


def check_model(key: str, *, input_shape: Any = None, options: dict | None = None) -> None:
    """Raise ModelError if this key, shape and options could not be built. Cheap: no torch import."""
    _resolve(key, input_shape, options)


def _check_builtin_shape(key: str, shape: tuple[int, ...], opts: dict) -> None:
    if key == "mlp-small" and len(shape) != 1:
        raise ModelError(f"model 'mlp-small' takes a 1-D input (features,), not {shape}")
    if key == "cnn-small" and (len(shape) != 3 or shape[1] < 4 or shape[2] < 4):
        raise ModelError(f"model 'cnn-small' takes a (channels, height, width) input with height and "
                         f"width of at least 4, not {shape}")
    if key in ("transformer-small", "transformer-base"):
        if len(shape) != 2:
            raise ModelError(f"model {key!r} takes a (tokens, width) input, not {shape}")
        if shape[1] % opts["heads"]:
            raise ModelError(f"model {key!r}: width {shape[1]} must be divisible by heads ({opts['heads']})")


def _fingerprint(key: str, shape: tuple[int, ...], opts: dict) -> str:
    # The user factory's dotted path is part of the identity: two registrations of one key must not
    # share a weights file.
    with _registry_lock:
        source = _user_paths.get(key, "builtin")
    blob = json.dumps({"v": ZOO_VERSION, "key": key, "source": source, "shape": list(shape), "options": opts},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def default_model_dir() -> Path:
    """Where generated weights live: $MODEL_DIR, else <repo>/var/models."""
    env = os.environ.get("MODEL_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "var" / "models"


# ---- building modules (torch) ----------------------------------------------------------------------
def _build(key: str, shape: tuple[int, ...], opts: dict) -> torch.nn.Module:
    from torch import nn

    if key == "null":
        return _torch_classes()["null"]()
    if key == "mlp-small":
        layers: list[nn.Module] = []
        width = shape[0]
        for _ in range(opts["layers"]):
            layers += [nn.Linear(width, opts["hidden"]), nn.ReLU()]
            width = opts["hidden"]
        layers.append(nn.Linear(width, opts["classes"]))
        return nn.Sequential(*layers)
    if key == "cnn-small":
        w = opts["width"]
        # Three 3x3 conv blocks with two 2x2 pools: about 6 MFLOP per 32x32 image, i.e. a few ms for
        # a batch of 32 on two CPU cores, so batching effects are visible without long runs.
        return nn.Sequential(
            nn.Conv2d(shape[0], w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, opts["classes"]),
        )
    if key in ("transformer-small", "transformer-base"):
        return _torch_classes()["transformer"](shape[1], opts)
    factory = _user_factory(key)
    assert factory is not None  # _check_key ran first
    user_opts = {k: v for k, v in opts.items() if k != USER_WEIGHTS_OPTION}
    try:
        module = factory(tuple(shape), user_opts)
    except Exception as exc:
        raise ModelError(f"user model {key!r}: factory failed for input shape {shape}: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ModelError(f"user model {key!r}: factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


@functools.cache
def _torch_classes() -> dict[str, type]:
    """Module classes of the built-ins, defined on first use so importing this module stays torch-free."""
    import torch
    from torch import nn

    class NullModel(nn.Module):
        """Returns its input unchanged. Its one-element parameter keeps the load path real."""

        def __init__(self) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x

    class TinyTransformer(nn.Module):  # transformer-small and transformer-base, by options
        def __init__(self, width: int, opts: dict) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(width, opts["heads"], dim_feedforward=opts["ff"], dropout=0.0,
                                               batch_first=True)
            # enable_nested_tensor only matters for padded batches; off avoids a warning and a code path.
            self.encoder = nn.TransformerEncoder(layer, opts["layers"], enable_nested_tensor=False)
            self.head = nn.Linear(width, opts["classes"])

        def forward(self, x):
            return self.head(self.encoder(x).mean(dim=1))

    return {"null": NullModel, "transformer": TinyTransformer}


def _build_seeded(key: str, shape: tuple[int, ...], opts: dict, seed: int) -> torch.nn.Module:
    """Build with the global RNG forked and seeded, so init is deterministic and nobody else's RNG moves."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(key, shape, opts)


# ---- weights on disk ---------------------------------------------------------------------------------
def weights_path(key: str, *, input_shape=None, options: dict | None = None, model_dir: Path) -> Path:
    """Path of the generated weights file for this (model, shape, options); it may not exist yet."""
    shape, opts = _resolve(key, input_shape, options)
    return Path(model_dir) / f"{_safe_name(key)}-{_fingerprint(key, shape, opts)}.safetensors"


def ensure_weights(key: str, *, input_shape=None, options: dict | None = None, model_dir: Path) -> Path:
    """Write deterministic weights for this model on first use; return the file's path.

    Same key, shape and options -> identical bytes. The file is written to a temporary name in the same
    directory and renamed with os.replace, so a reader never sees a partial file and two processes racing
    to create it both end with one complete file. Does nothing if the file already exists.
    """
    from safetensors.torch import save_file

    path = weights_path(key, input_shape=input_shape, options=options, model_dir=model_dir)
    if path.exists():
        return path
    shape, opts = _resolve(key, input_shape, options)
    seed = (WEIGHTS_SEED + int(_fingerprint(key, shape, opts), 16)) % 2**63
    module = _build_seeded(key, shape, opts, seed)
    state = _contiguous_state(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        # One metadata key: safetensors stores metadata in a hash map whose order varies from run to
        # run, and several keys would make the bytes differ between identical models.
        meta = json.dumps({"model": key, "input_shape": list(shape), "options": opts, "zoo_version": ZOO_VERSION},
                          sort_keys=True, default=str)
        save_file(state, tmp, metadata={"slsbench": meta})
        # On disk before it is visible: dirty pages cannot be dropped from the page cache, and every cold start
        # drops them to read the file from the disk.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def weights_file(key: str, *, input_shape=None, options: dict | None = None, model_dir: Path) -> Path:
    """The file a cold start of this model reads: a user model's own `weights_path` option, else the generated
    weights (written first if missing, see ensure_weights)."""
    _shape, opts = _resolve(key, input_shape, options)
    user_weights = opts.get(USER_WEIGHTS_OPTION) if key not in BUILTIN_SHAPES else None
    installed = None
    if not user_weights and key not in BUILTIN_SHAPES:
        with _registry_lock:
            installed = _user_weights.get(key)  # an installed package's own file (operator-trusted)
    if user_weights or installed:
        # A spec's weights_path must lie under USER_WEIGHTS_DIR (checked again where it is read); an installed
        # model's file is the package's. Neither may be a format whose loader runs code.
        path = user_weights_file(key, user_weights) if user_weights else Path(installed)
        _refuse_unsafe_weights(key, path)
        if not path.exists():
            raise ModelError(f"user model {key!r}: weights file {path} does not exist")
        return path
    return ensure_weights(key, input_shape=input_shape, options=options, model_dir=model_dir)


def _contiguous_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone gives each tensor its own storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    import torch
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        # User-supplied non-safetensors files: tensors only, no arbitrary pickled objects (weights_only refuses a
        # pickled module, whose unpickling could run code).
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"weights file {path} does not exist") from exc
    except Exception as exc:
        raise ModelError(f"weights file {path} is unreadable ({type(exc).__name__}: {exc}); delete it "
                         "and it is regenerated on the next load (user-supplied files must be replaced)") from exc
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} does not hold a state_dict (found {type(state).__name__})")
    return state


# ---- loading (the cold start) -------------------------------------------------------------------------
@dataclass
class LoadedModel:
    key: str
    module: Any  # torch.nn.Module, eval mode, on `device`
    device: Any  # torch.device
    input_shape: tuple[int, ...]
    weights_path: Path
    weights_bytes: int
    param_bytes: int
    timings_ms: dict[str, float]  # build, load, to_device, warmup, total
    options: dict = field(default_factory=dict)
    _host_batch: Any = field(default=None, repr=False)  # cached deterministic input (CPU), see make_batch


def load_model(key: str, *, input_shape=None, options: dict | None = None, device: Any = "cpu",
               model_dir: Path) -> LoadedModel:
    """A real cold start: build the skeleton, read the weights file, move to `device`, warm up.

    `ensure_weights` runs first and is not timed: generating the file is a one-time preparation, not
    part of any cold start. Each phase is timed with time.perf_counter; `total` is their sum measured
    end to end. On CUDA the device is synchronized before each phase ends so the times are honest.
    The platform's runners (workers.instance) drop the file's page cache before calling this, so the load
    reads the disk as a cold start on a fresh node would.
    """
    import torch

    shape, opts = _resolve(key, input_shape, options)
    path = weights_file(key, input_shape=shape, options=options, model_dir=model_dir)
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t_start = time.perf_counter()
    # The skeleton's random init is thrown away by load_state_dict; fork the RNG so building does not
    # disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        module = _build(key, shape, opts)
    t_built = time.perf_counter()
    state = _read_weights(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights file {path} does not match model {key!r} with input shape {shape}: {exc}") from exc
    del state
    t_loaded = time.perf_counter()
    module = module.to(dev)
    module.eval()
    sync()
    t_moved = time.perf_counter()
    loaded = LoadedModel(key=key, module=module, device=dev, input_shape=shape, weights_path=path,
                         weights_bytes=path.stat().st_size,
                         param_bytes=sum(t.numel() * t.element_size()
                                         for t in list(module.parameters()) + list(module.buffers())),
                         timings_ms={}, options=opts)
    batch = make_batch(loaded, 1)
    try:
        with torch.inference_mode():
            module(batch)
        sync()
    except Exception as exc:
        raise ModelError(f"model {key!r} failed its warm-up pass on input {tuple(batch.shape)}: "
                         f"{type(exc).__name__}: {exc}") from exc
    t_end = time.perf_counter()
    loaded.timings_ms = {
        "build": (t_built - t_start) * 1e3,
        "load": (t_loaded - t_built) * 1e3,
        "to_device": (t_moved - t_loaded) * 1e3,
        "warmup": (t_end - t_moved) * 1e3,
        "total": (t_end - t_start) * 1e3,
    }
    return loaded


def make_batch(loaded: LoadedModel, batch_size: int) -> torch.Tensor:
    """Deterministic input of `batch_size` samples on the model's device.

    The host-side data is generated once (fixed seed) and sliced, so the hot path pays no RNG cost;
    on CUDA each call copies the slice to the device, as real request payloads arrive in host memory.
    """
    import torch

    if batch_size < 1:
        raise ModelError(f"batch size must be at least 1, got {batch_size}")
    host = loaded._host_batch
    if host is None or host.shape[0] < batch_size:
        gen = torch.Generator().manual_seed(INPUT_SEED)
        # Grow geometrically so a run with rising batch sizes regenerates only a few times.
        rows = max(batch_size, 2 * (host.shape[0] if host is not None else 0), 1)
        host = torch.randn((rows, *loaded.input_shape), generator=gen)
        loaded._host_batch = host
    batch = host[:batch_size]
    return batch if loaded.device.type == "cpu" else batch.to(loaded.device, non_blocking=False)


# ---- memory estimate -----------------------------------------------------------------------------------
# What one cold start adds to an instance process beyond the model's own tensors, measured on the CPU (VmHWM of
# instance processes over their RSS after `import torch`, tests/workers/test_memory_estimate.py): the code of the
# load path and of the kernels the forward runs, paged in from torch's libraries, and the allocator's pools.
# A model whose forward runs no operator (the null model) pages in the load path only.
RUNTIME_LOAD_BYTES = 5 * 2**20
RUNTIME_KERNELS_BYTES = 4 * 2**20
_estimate_cache: dict[str, tuple[int, int, int, bool]] = {}
_estimate_lock = threading.Lock()


def estimate_memory_bytes(key: str, *, input_shape=None, options: dict | None = None, batch_size: int = 1) -> int:
    """Memory one instance of this model needs to load and run a batch of `batch_size`, beyond the runtime's
    import (what the engine's PROCESS_OVERHEAD_BYTES covers):

      load      RUNTIME_LOAD_BYTES + twice the parameters and buffers (the skeleton and the weights read
                from disk are both alive while load_state_dict copies one into the other)
      forward   RUNTIME_LOAD_BYTES, plus RUNTIME_KERNELS_BYTES when the forward runs any operator, + the
                parameters + the input batch + the peak of the activations alive at once

    and the estimate is the larger of the two: the weights read are freed before the warm-up's forward pages in
    the kernels' code, so the two phases' peaks are never alive together (adding both over-counted a small
    model's load by the kernels' 4 MiB: mlp-small 14.1 MiB against 7.7-9.5 MiB measured).

    The activations' peak is traced on torch's "meta" device (no memory, no compute): every operator's output
    is counted from its creation until it is freed, so what a forward releases as it goes is not counted twice.
    It is traced at batch 1 and scales with the batch.
    """
    shape, opts = _resolve(key, input_shape, options)
    cache_key = f"{key}|{_fingerprint(key, shape, opts)}"
    with _estimate_lock:
        cached = _estimate_cache.get(cache_key)
    if cached is None:
        cached = _measure_footprint(key, shape, opts)
        with _estimate_lock:
            _estimate_cache[cache_key] = cached
    static_bytes, input_bytes, act_bytes, runs_kernels = cached
    b = max(1, batch_size)
    load = RUNTIME_LOAD_BYTES + 2 * static_bytes
    forward = (RUNTIME_LOAD_BYTES + (RUNTIME_KERNELS_BYTES if runs_kernels else 0)
               + static_bytes + b * (input_bytes + act_bytes))
    return int(max(load, forward))


def _live_tensor_tracer():
    """A dispatch mode that follows the bytes of operator outputs alive at once (views share their base's storage
    and are not counted again); `peak` is the most alive at any moment, `ops` the operators run."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten  # under inference_mode the dispatch sees conv2d itself, elsewhere convolution
    convolutions = {aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default}

    class LiveTensors(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and not t._is_view():
                    n = t.untyped_storage().nbytes()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, n)
            if func in convolutions:  # its working buffer, alive with its input and output while it runs
                self.peak = max(self.peak, self.live + _unfold_bytes(args[1], out))
            return out

        def _free(self, n: int) -> None:
            self.live -= n

    return LiveTensors()


def _unfold_bytes(weight, out) -> int:
    """A convolution's working buffer on the CPU: the unfolded input (im2col) of one group, one column per output
    position and one row per input channel of the group and kernel tap. Invisible to the tracer (not an output);
    for cnn-small at batch 64 it is about 9 MiB, most of what the estimate missed before it was counted."""
    per_position = math.prod(weight.shape[1:])  # (in channels / groups) x kernel taps
    batch, positions = out.shape[0], math.prod(out.shape[2:])
    return int(batch * per_position * positions * out.element_size())


def _measure_footprint(key: str, shape: tuple[int, ...], opts: dict) -> tuple[int, int, int, bool]:
    """(parameter and buffer bytes, input bytes per sample, peak activation bytes per sample, runs operators)."""
    import torch

    input_bytes = math.prod(shape) * 4
    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            module = _build(key, shape, opts)
    except ModelError:
        raise
    except Exception:
        # A factory that cannot build on meta: build it for real once (trusted, small models).
        with torch.random.fork_rng(devices=[]):
            module = _build(key, shape, opts)
    static = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    tracer = _live_tensor_tracer()
    try:
        module.eval()
        device = next((t.device for t in module.parameters()), torch.device("meta"))
        x = torch.empty((1, *shape), device=device)
        with torch.inference_mode(), tracer:
            module(x)
        act, runs = tracer.peak, tracer.ops > 0
    except Exception:
        # No meta forward (some fused kernels lack one): fall back to a generous multiple of the input.
        act, runs = 16 * input_bytes, True
    return static, input_bytes, act, runs
