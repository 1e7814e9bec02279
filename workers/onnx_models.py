"""ONNX models: reading and checking a file's signature, exporting zoo models, and the ONNX Runtime cold start.

Three users:

- the model registry (controlplane/registry) calls `inspect_file` on an upload before it is stored: the graph
  must pass `onnx.checker`, use only the standard operator domains, and hold all of its weights in the file
  itself (ONNX external-data entries are paths chosen by whoever made the file: an upload naming one is refused
  rather than resolved). The file is read as a skeleton (workers.onnx_skeleton), never whole;
- the engine calls `export_zoo_model` before the trial's clock starts, so a built-in zoo model can run under
  ONNX Runtime (`model_runtime: onnxruntime`): the model is built with its generated weights and exported once,
  with a dynamic batch axis, to a `.onnx` file cached beside the weights;
- an instance (workers.instance) calls `load_session` for its cold start. The phases it times are `load`
  (reading the file from the disk, its page cache dropped first) and `session` (creating the InferenceSession
  from those bytes: graph optimisation and placing the weights); `warmup` is one run at batch 1.

Inputs are generated deterministically from the signature (`make_feeds`): float tensors from a seeded normal
distribution, integer tensors in [0, 8) (token ids, class indices), booleans false. A non-batch dimension that
the signature leaves symbolic takes the size 1.

ONNX Runtime uses the CPU execution provider on the CPU and the CUDA provider on a CUDA device; the CUDA path is
guarded (it needs the onnxruntime-gpu wheel) and UNTESTED on this project's CI machines, which have no GPU.

`onnx` and `onnxruntime` are imported inside the functions that need them: importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUT_SEED = 7
# Operator domains of the ONNX standard ("" and "ai.onnx" are the same). Anything else needs a custom operator
# library that an upload cannot bring.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# Element types we can generate inputs for (TensorProto enum names -> numpy dtype names).
_DTYPES = {
    "FLOAT": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT64": "int64", "INT32": "int32",
    "INT16": "int16", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool",
}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
               "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OnnxModelError(Exception):
    """The file is not a model we can run: not ONNX, invalid graph, custom operators, external data, ..."""


@dataclass(frozen=True)
class Signature:
    """What an ONNX file says about itself. A dimension is an int, or a string for a symbolic (dynamic) one."""

    inputs: list[dict]  # [{"name", "shape": [int | str], "dtype"}]
    outputs: list[dict]
    opset: int
    dynamic_batch: bool  # every input's first dimension is symbolic: any batch size runs

    @property
    def input_shape(self) -> list[int | str]:
        """The first input's per-sample shape (batch dimension dropped when dynamic), as pages show it."""
        shape = self.inputs[0]["shape"] if self.inputs else []
        return list(shape[1:]) if self.dynamic_batch else list(shape)

    def as_dict(self) -> dict:
        return {"inputs": self.inputs, "outputs": self.outputs, "opset": self.opset,
                "dynamic_batch": self.dynamic_batch}


def _dims(value_info) -> list[int | str]:
    out: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def inspect_file(path: Path) -> Signature:
    """Check an ONNX file and read its signature. Raises OnnxModelError with a reason a user can act on.

    The file is read as a skeleton (workers.onnx_skeleton: the graph with its weights counted and skipped, never
    read), so memory stays bounded whatever the file's size; `onnx.checker` checks the skeleton.
    """
    import onnx
    from google.protobuf.message import DecodeError

    from workers.onnx_skeleton import STRIPPED_LOCATION, Malformed, SkeletonError, skeleton

    path = Path(path)
    try:
        data = skeleton(path)
        model = onnx.ModelProto.FromString(data)
    except (Malformed, DecodeError, RuntimeError, ValueError, OSError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, Malformed) else type(exc).__name__
        raise OnnxModelError(f"not an ONNX model (the file does not parse as an ONNX protobuf: {detail})") from exc
    except SkeletonError as exc:
        raise OnnxModelError(str(exc)) from exc
    if not model.HasField("graph") or not model.opset_import:
        raise OnnxModelError("not an ONNX model (no graph or no operator set)")
    domains = {o.domain for o in model.opset_import} | _node_domains(model.graph)
    custom = sorted(d for d in domains if d not in STANDARD_DOMAINS)
    if custom:
        raise OnnxModelError(f"uses custom operator domain(s) {', '.join(custom)}: only the standard ONNX "
                             "operators can run here (no custom operator libraries)")
    initializers = {i.name for i in model.graph.initializer}
    inputs = [{"name": i.name, "shape": _dims(i), "dtype": _dtype_name(i.type.tensor_type.elem_type)}
              for i in model.graph.input if i.name not in initializers]
    outputs = [{"name": o.name, "shape": _dims(o), "dtype": _dtype_name(o.type.tensor_type.elem_type)}
               for o in model.graph.output]
    if not inputs:
        raise OnnxModelError("the graph has no inputs to feed")
    nul = [x["name"] for x in inputs + outputs if "\x00" in x["name"] or any("\x00" in str(d) for d in x["shape"])]
    if nul:  # the signature is stored as JSON, and PostgreSQL refuses NUL in text and JSON
        raise OnnxModelError(f"input or output {nul[0]!r} has a NUL character in its name or dimension names")
    for i in inputs:
        if not i["shape"]:
            raise OnnxModelError(f"input {i['name']!r} is a scalar; inputs must be tensors with a batch dimension")
        if i["dtype"] not in _DTYPES.values():
            raise OnnxModelError(f"input {i['name']!r} has element type {i['dtype']}, for which no input can be "
                                 f"generated (supported: {', '.join(sorted(set(_DTYPES.values())))})")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    dynamic = all(isinstance(i["shape"][0], str) for i in inputs)
    # The checker resolves the skeleton's external-data entries beside the file it checks: one empty file.
    with tempfile.TemporaryDirectory(prefix="onnx-check-") as tmp:
        (Path(tmp) / STRIPPED_LOCATION).touch()
        checked = Path(tmp) / "skeleton.onnx"
        checked.write_bytes(data)
        del data, model
        try:
            onnx.checker.check_model(str(checked))
        except onnx.checker.ValidationError as exc:
            raise OnnxModelError(f"the ONNX checker refused the graph: {str(exc).splitlines()[0][:300]}") from exc
    return Signature(inputs=inputs, outputs=outputs, opset=int(opset), dynamic_batch=dynamic)


def inspect_file_isolated(path: Path, *, timeout_s: float = 600.0) -> tuple[Signature, int | None]:
    """`inspect_file` in a child process: (signature, the child's peak RSS in bytes).

    The check's memory is bounded (the skeleton, not the file), but it imports onnx and parses a file anyone may
    have made: in a child, the web process stays as it was and a parser crash on a hostile file kills only the
    child.
    """
    try:
        proc = subprocess.run([sys.executable, "-m", "workers.onnx_models", "inspect", str(path)],
                              capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    except subprocess.TimeoutExpired as exc:
        raise OnnxModelError(f"checking the file took longer than {timeout_s:.0f} s") from exc
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise OnnxModelError(f"the file could not be checked (the checker exited with code {proc.returncode})") \
            from None
    if "error" in answer:
        raise OnnxModelError(answer["error"])
    return Signature(**answer["signature"]), answer.get("peak_rss_bytes")


def _inspect_main(path: str) -> int:
    from workers.procstat import peak_rss_bytes

    try:
        out: dict = {"signature": inspect_file(Path(path)).as_dict()}
    except OnnxModelError as exc:
        out = {"error": str(exc)}
    out["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(out))
    return 0


def _node_domains(graph) -> set[str]:
    out: set[str] = set()
    for node in graph.node:
        out.add(node.domain)
        for attr in node.attribute:  # subgraphs of If / Loop / Scan
            if attr.HasField("g"):
                out |= _node_domains(attr.g)
            for g in attr.graphs:
                out |= _node_domains(g)
    return out


def _dtype_name(elem_type: int) -> str:
    import onnx

    name = onnx.TensorProto.DataType.Name(elem_type)
    return _DTYPES.get(name, name.lower())


# ---- zoo models exported to ONNX (before the trial's clock) ----------------------------------------------------
def onnx_path_for(weights: Path) -> Path:
    """Where the ONNX export of a zoo model lives: beside its weights file, same name, `.onnx`."""
    return Path(weights).with_suffix(".onnx")


def export_zoo_model(key: str, *, input_shape=None, options: dict | None = None, model_dir: Path) -> Path:
    """Export a zoo model, with the weights its torch cold starts read, to ONNX once; return the file's path.

    The batch axis is dynamic, so every batch size the batcher forms runs. Written to a temporary name, fsynced
    (a cold start drops the file's page cache, which dirty pages defeat) and renamed: a reader never sees a
    partial file. Does nothing if the file exists.
    """
    import warnings

    import torch

    from workers import zoo

    weights = zoo.weights_file(key, input_shape=input_shape, options=options, model_dir=model_dir)
    path = onnx_path_for(weights)
    if path.exists():
        return path
    loaded = zoo.load_model(key, input_shape=input_shape, options=options, device="cpu", model_dir=model_dir)
    sample = zoo.make_batch(loaded, 2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The TorchScript-based exporter: deterministic, fast (well under a second for the zoo) and with no
            # extra dependency; torch marks it deprecated in favour of the dynamo exporter.
            warnings.simplefilter("ignore")
            torch.onnx.export(loaded.module, (sample,), tmp, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except Exception as exc:
        raise OnnxModelError(f"model {key!r} could not be exported to ONNX: {type(exc).__name__}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def estimate_memory_bytes(path: Path, batch_size: int = 1) -> int:
    """Rough memory of one ONNX Runtime instance: the weights twice (the bytes read and the session's copy)
    plus a generous multiple of one batch's inputs for activations. An estimate for refusing what cannot fit."""
    sig, _peak = inspect_file_isolated(path)  # onnx is not imported in the trial's process
    return memory_estimator(sig, Path(path).stat().st_size)(batch_size)


def memory_estimator(sig: Signature, file_bytes: int) -> Callable[[int], int]:
    """estimate_memory_bytes as a function of the batch size, for a file already inspected."""
    per_sample = sum(math.prod(d if isinstance(d, int) else 1 for d in i["shape"][1 if sig.dynamic_batch else 0:])
                     * 8 for i in sig.inputs)
    return lambda batch_size: int(2 * file_bytes + 16 * per_sample * max(1, batch_size))


# ---- the cold start and the hot path (inside an instance) -------------------------------------------------------
@dataclass
class LoadedSession:
    session: Any  # onnxruntime.InferenceSession
    path: Path
    weights_bytes: int
    inputs: list[dict]  # [{"name", "shape": per-sample dims, "dtype"}]
    dynamic_batch: bool
    provider: str
    timings_ms: dict[str, float]
    _host: dict = field(default_factory=dict, repr=False)  # cached deterministic inputs, see make_feeds


def providers_for(device: str) -> list[str]:
    """CPU execution provider on the CPU; CUDA first on a CUDA device (needs onnxruntime-gpu; untested here)."""
    if device.startswith("cuda"):
        index = device.split(":", 1)[1] if ":" in device else "0"
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]  # type: ignore[list-item]
    return ["CPUExecutionProvider"]


def load_session(path: Path, *, device: str = "cpu", threads: int = 1) -> LoadedSession:
    """An ONNX Runtime cold start: read the file, create the session, run once. Each phase is timed."""
    import onnxruntime as ort

    path = Path(path)
    t0 = time.perf_counter()
    data = path.read_bytes()
    t_loaded = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initializers would flood the worker's log
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=providers_for(device))
    except Exception as exc:
        raise OnnxModelError(f"ONNX Runtime could not create a session for {path.name}: "
                             f"{type(exc).__name__}: {exc}") from exc
    del data
    t_session = time.perf_counter()
    inputs = []
    dynamic = True
    for i in session.get_inputs():
        dims = list(i.shape)
        dynamic = dynamic and bool(dims) and not isinstance(dims[0], int)
        inputs.append({"name": i.name, "shape": dims, "dtype": _ORT_DTYPES.get(i.type, "float32")})
    for i in inputs:
        dims = i["shape"][1:] if dynamic else i["shape"]
        i["shape"] = [d if isinstance(d, int) and d > 0 else 1 for d in dims]
    loaded = LoadedSession(session=session, path=path, weights_bytes=path.stat().st_size, inputs=inputs,
                           dynamic_batch=dynamic, provider=session.get_providers()[0], timings_ms={})
    try:
        session.run(None, make_feeds(loaded, 1))
    except Exception as exc:
        raise OnnxModelError(f"{path.name} failed its warm-up run: {type(exc).__name__}: {exc}") from exc
    t_end = time.perf_counter()
    loaded.timings_ms = {"load": (t_loaded - t0) * 1e3, "session": (t_session - t_loaded) * 1e3,
                         "warmup": (t_end - t_session) * 1e3, "total": (t_end - t0) * 1e3}
    return loaded


def make_feeds(loaded: LoadedSession, batch_size: int) -> dict:
    """Deterministic inputs for `batch_size` requests: generated once per input (seeded) and sliced, so the hot
    path pays no generation. A model without a dynamic batch dimension runs one request at a time."""
    import numpy as np

    if batch_size < 1:
        raise OnnxModelError(f"batch size must be at least 1, got {batch_size}")
    if not loaded.dynamic_batch:
        if batch_size != 1:
            raise OnnxModelError(f"{loaded.path.name} has no dynamic batch dimension: it runs at batch 1, "
                                 f"not {batch_size}")
        if not loaded._host:
            loaded._host = {i["name"]: _generate(i, None, np) for i in loaded.inputs}
        return loaded._host
    rows = next(iter(loaded._host.values())).shape[0] if loaded._host else 0
    if rows < batch_size:
        rows = max(batch_size, 2 * rows)
        loaded._host = {i["name"]: _generate(i, rows, np) for i in loaded.inputs}
    return {name: arr[:batch_size] for name, arr in loaded._host.items()}


def _generate(spec: dict, rows: int | None, np):
    rng = np.random.default_rng(INPUT_SEED)
    shape = tuple(spec["shape"]) if rows is None else (rows, *spec["shape"])
    dtype = spec["dtype"]
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "bool":
        return np.zeros(shape, dtype=bool)
    return rng.integers(0, 8, size=shape).astype(dtype)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "inspect":
    raise SystemExit(_inspect_main(sys.argv[2]))
