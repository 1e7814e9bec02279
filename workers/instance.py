"""Where an instance's model lives: its own worker process (the default), or a thread of this process.

A serverless platform starts each instance as a process: a cold start spawns an interpreter, imports the
framework, creates the device context, reads the weights from disk, moves them to the device and runs a
warm-up pass. `ProcessRunner` does exactly that and times each phase:

  process_start   Popen until the child's first line runs (interpreter start-up)
  import          `import torch` and the zoo in the child
  device_context  the device's context: CUDA context creation on a GPU (a first allocation, synchronized);
                  on the CPU the first tensor allocation, which is nearly free
  build           the module skeleton
  load            reading the weights file (its page cache dropped first) into the skeleton
  to_device       moving the weights to the device
  warmup          one warm-up forward pass
  total           Popen until the child reported ready (measured by the parent)

A function whose model runs under ONNX Runtime (`FunctionSpec.model_runtime == "onnxruntime"`, the model's
file in `FunctionSpec.model_file`) has the same process start, then:

  import          `import onnxruntime` (and numpy) in the child; torch is not imported
  device_context  nothing on the CPU; on CUDA the provider creates its context inside the session (untested)
  load            reading the .onnx file (its page cache dropped first)
  session         creating the InferenceSession from those bytes (graph optimisation, weights placed)
  warmup          one run at batch 1

The child's timestamps are `time.perf_counter()` readings: CLOCK_MONOTONIC on Linux, one clock for every
process of the host, so the parent can subtract them from its own.

The weights file's page cache is dropped before the read (posix_fadvise DONTNEED, after the file was
fsynced when written) and whether that took effect is checked with mincore(2): `page_cache_resident` is
the share of the file's pages still cached after the drop (0.0: the read came from the disk; None: the host
could not tell).

Batches go over a socketpair as raw 4-byte little-endian sizes and 1-byte answers, read and written with
os.read / os.write on the descriptor (no pickle, no framing layer on the hot path: multiprocessing's
Connection added ~20 us per round trip here); the start-up configuration and the ready message use a
Connection, and an error's text follows its error byte as a 4-byte length and UTF-8.

`ThreadRunner` keeps the model in this process (the variant's `runtime: "thread"`): no process start, no
torch import, no isolation. Its results are labelled "shared process, no isolation".

GPU paths (CUDA context, streams, MPS and MIG environments) are guarded so this module imports and runs
without a GPU; they are UNTESTED on this project's CI machines, which have no GPU.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

_SIZE = struct.Struct("<i")
_OK = b"\x00"
_ERR = b"\x01"


def _status_bytes(pid: int, field: str) -> int | None:
    """A memory figure of /proc/<pid>/status in bytes (VmRSS: resident now, VmHWM: the peak); None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM), else its current RSS."""
    from workers.procstat import peak_rss_bytes as hwm

    peak = hwm(pid)
    if peak is not None:
        return peak
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def _read_exactly(fd: int, n: int) -> bytes:
    data = os.read(fd, n)
    while len(data) < n:  # a stream socket may split a message (never seen for 4 bytes, but possible)
        more = os.read(fd, n - len(data))
        if not more:
            raise EOFError("the other side closed the connection")
        data += more
    if not data:
        raise EOFError("the other side closed the connection")
    return data


class ModelRaised(Exception):
    """The model raised during a batch (the trial goes on; the batch's requests are errors)."""


class StartFailed(Exception):
    """The instance could not start (the cold start failed)."""


def page_cache_resident(path: Path) -> float | None:
    """Share of the file's pages in the OS page cache (mincore on a shared read-only mapping); None if the
    host cannot tell (no mincore, an empty file)."""
    import ctypes
    import ctypes.util
    import mmap

    size = os.path.getsize(path)
    if size == 0 or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    except (OSError, AttributeError):
        return None
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            return sum(b & 1 for b in vec) / pages
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def drop_page_cache(path: Path) -> float | None:
    """Ask the OS to drop the file's cached pages; return the share still resident afterwards (see above)."""
    if not hasattr(os, "posix_fadvise"):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return page_cache_resident(path)


# ---- in this process ----------------------------------------------------------------------------------
class ThreadRunner:
    """A model in this process (runtime "thread"). On CUDA each runner has its own stream."""

    kind = "thread"

    def __init__(self, spec, torch_device: str, model_dir: Path):
        self.spec = spec
        self.torch_device = torch_device
        self.model_dir = model_dir
        self.loaded = None
        self.stream = None
        self.info: dict = {}

    def start(self, should_abort=None) -> dict:
        from workers import zoo

        if self.spec.model_runtime == "onnxruntime":
            from workers import onnx_models

            resident = drop_page_cache(Path(self.spec.model_file))
            self.loaded = onnx_models.load_session(Path(self.spec.model_file), device=self.torch_device)
            return {"timings_ms": dict(self.loaded.timings_ms), "weights_bytes": int(self.loaded.weights_bytes),
                    "page_cache_resident": resident}
        path = zoo.weights_file(self.spec.model, input_shape=self.spec.input_shape, options=self.spec.options,
                                model_dir=self.model_dir)
        resident = drop_page_cache(path)
        self.loaded = zoo.load_model(self.spec.model, input_shape=self.spec.input_shape, options=self.spec.options,
                                     device=self.torch_device, model_dir=self.model_dir)
        if self.torch_device.startswith("cuda"):  # untested here (no GPU on CI)
            import torch

            self.stream = torch.cuda.Stream(device=self.torch_device)
        return {"timings_ms": dict(self.loaded.timings_ms), "weights_bytes": int(self.loaded.weights_bytes),
                "page_cache_resident": resident}

    def run(self, batch_size: int) -> None:
        if self.spec.model_runtime == "onnxruntime":
            from workers.onnx_models import make_feeds

            try:
                self.loaded.session.run(None, make_feeds(self.loaded, batch_size))
            except Exception as exc:
                raise ModelRaised(f"{type(exc).__name__}: {exc}") from exc
            return
        import torch

        from workers import zoo

        loaded = self.loaded
        try:
            with torch.inference_mode():
                if self.stream is None:
                    loaded.module(zoo.make_batch(loaded, batch_size))
                else:  # untested here: CUDA time-slicing, one stream per instance thread
                    with torch.cuda.stream(self.stream):
                        loaded.module(zoo.make_batch(loaded, batch_size))
                    self.stream.synchronize()  # completion means the result exists, not that it was queued
        except Exception as exc:
            raise ModelRaised(f"{type(exc).__name__}: {exc}") from exc

    def kill(self) -> None:
        pass

    def fileno(self) -> None:
        return None  # in-process: nothing to wait on

    def close(self) -> None:
        self.loaded = None
        self.stream = None
        if self.torch_device.startswith("cuda"):  # give the memory back to the device for the next one
            import torch

            torch.cuda.empty_cache()


# ---- its own process ----------------------------------------------------------------------------------
class ProcessRunner:
    """A model in its own process (runtime "process"), optionally with a fixed share of the device.

    The child is a fresh interpreter (`python -m workers.instance FD`), not a multiprocessing fork or spawn:
    forking a process that runs torch and a dozen threads can deadlock, and spawn re-imports the parent's
    __main__ (a Celery worker, manage.py, a REPL), which may not be importable twice. Its environment
    (CUDA_VISIBLE_DEVICES / CUDA_MPS_ACTIVE_THREAD_PERCENTAGE) is set before the interpreter starts, so
    before CUDA can initialise; its affinity is set before it imports torch.
    """

    kind = "process"

    def __init__(self, spec, torch_device: str, model_dir: Path, *, cores: list[int] | None = None,
                 threads: int = 1, env: dict[str, str] | None = None, user_models: dict[str, str] | None = None):
        self.spec = spec
        self.torch_device = torch_device
        self.model_dir = model_dir
        self.cores = cores
        self.threads = threads
        self.env = dict(env or {})
        self.user_models = dict(user_models or {})
        self.proc: subprocess.Popen | None = None
        self.conn = None
        self.info: dict = {}
        self._send_error: Exception | None = None
        self._fd: int | None = None
        self._answer: bytes | OSError | None = None  # the answer's first byte, when take_answer() read it

    def start(self, should_abort=None) -> dict:
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env.update(self.env)
        # The child must import what this process imports (workers, user-model modules from tests or
        # plugins): give it this process's import path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["OMP_NUM_THREADS"] = str(max(1, int(self.threads)))
        t_popen = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.instance", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, close_fds=True)
        theirs.close()
        self.conn = Connection(ours.detach())
        self._fd = self.conn.fileno()
        spec = self.spec
        self.conn.send({"key": spec.model, "input_shape": spec.input_shape, "options": dict(spec.options),
                        "model_dir": str(self.model_dir), "device": self.torch_device, "cores": self.cores,
                        "threads": self.threads, "user_models": self.user_models,
                        "model_runtime": spec.model_runtime, "model_file": spec.model_file})
        msg = self._recv(timeout_s=600.0, should_abort=should_abort)
        t_ready = time.perf_counter()
        if msg[0] != "ready":
            self.kill()
            self.close()
            raise StartFailed(f"instance process failed to start: {msg[1]}")
        info = msg[1]
        marks = info["marks"]  # absolute perf_counter readings in the child (same clock)
        timings = {
            "process_start": max(0.0, (marks["main"] - t_popen) * 1e3),
            "import": (marks["imported"] - marks["main"]) * 1e3,
            "device_context": (marks["context"] - marks["imported"]) * 1e3,
            **{k: float(v) for k, v in info["timings_ms"].items() if k != "total"},
        }
        timings["total"] = (t_ready - t_popen) * 1e3
        self.info = {"pid": self.proc.pid, "cores_requested": self.cores, "cores_actual": info["affinity"],
                     "torch_threads": info["torch_threads"], "env": dict(self.env)}
        return {"timings_ms": timings, "weights_bytes": int(info["weights_bytes"]),
                "page_cache_resident": info["page_cache_resident"],
                "baseline_rss_bytes": info.get("baseline_rss_bytes")}

    def _recv(self, timeout_s: float, should_abort=None):
        deadline = time.perf_counter() + timeout_s
        while not self.conn.poll(0.05):
            if should_abort is not None and should_abort():
                return ("error", "stopped while the instance process was starting")
            if self.proc is not None and self.proc.poll() is not None and not self.conn.poll(0):
                return ("error", f"instance process exited with code {self.proc.returncode}")
            if time.perf_counter() > deadline:
                return ("error", f"no answer from the instance process within {timeout_s:.0f} s")
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            code = self.proc.poll() if self.proc is not None else None
            return ("error", f"instance process died ({type(exc).__name__}, exit code {code})")

    def run(self, batch_size: int) -> None:
        self.send(batch_size)
        self.finish()

    def send(self, batch_size: int) -> None:
        """Hand a batch to the process (a 4-byte write: the caller may hold a lock). finish() reads the answer."""
        try:
            os.write(self._fd, _SIZE.pack(batch_size))
        except (OSError, ValueError, TypeError) as exc:
            self._send_error = exc

    def take_answer(self) -> float:
        """Read the answer's first byte now that the descriptor is readable (the caller saw it so) and return when
        it was read (perf_counter): the moment the batch's result reached this process. finish() then uses it.
        Called by the instance's own thread, without the platform's lock: only that thread reads this socket."""
        try:
            self._answer = os.read(self._fd, 1)
        except OSError as exc:
            self._answer = exc
        return time.perf_counter()

    def finish(self) -> None:
        """Wait for the answer to the batch sent last (unless take_answer() read it); a blocking read releases
        the GIL meanwhile."""
        try:
            if self._send_error is not None:
                raise self._send_error
            status, self._answer = self._answer, None
            if status is None:
                status = os.read(self._fd, 1)
            elif isinstance(status, OSError):
                raise status
            if status != _OK:
                if not status:
                    raise EOFError("the other side closed the connection")
                size = _SIZE.unpack(_read_exactly(self._fd, 4))[0]
                raise ModelRaised(_read_exactly(self._fd, size).decode("utf-8", "replace") if size else "error")
        except (EOFError, OSError, ValueError, TypeError) as exc:
            self._send_error = None
            code = self.proc.poll() if self.proc is not None else None
            raise ModelRaised(f"instance process is gone ({type(exc).__name__}, exit code {code})") from exc

    def fileno(self) -> int | None:
        """The connection's descriptor: readable when the answer to a batch (or the process's end) arrives."""
        return self.conn.fileno() if self.conn is not None else None

    def dead(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> None:
        if self.conn is not None:
            try:
                os.write(self._fd, _SIZE.pack(0))  # 0: exit
            except (OSError, ValueError, TypeError):
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=2.0)
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def _child(fd: int, t_main: float) -> int:
    """Entry point of an instance's process (python -m workers.instance FD)."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    cfg = conn.recv()
    cores = cfg["cores"]
    if cores:
        os.sched_setaffinity(0, cores)  # before torch starts its thread pool
    if cfg.get("model_runtime") == "onnxruntime":
        return _child_onnx(conn, cfg, t_main)
    try:
        import torch

        from workers import zoo

        t_imported = time.perf_counter()
        device = torch.device(cfg["device"])
        if device.type == "cuda":  # untested here (no GPU on CI): creates the CUDA context
            torch.cuda.init()
            torch.empty(1, device=device)
            torch.cuda.synchronize(device)
        else:
            torch.empty(1)
        t_context = time.perf_counter()
        torch.set_num_threads(max(1, int(cfg["threads"])))
        baseline_rss = _status_bytes(os.getpid(), "VmRSS")  # the runtime alone: what the model's memory adds to
        if cfg["user_models"]:
            zoo.register_user_models(cfg["user_models"])
        # Weights were generated before the trial's clock started; a missing file is generated here, outside
        # the timed phases, and reported by the zoo's own timings as not part of the load.
        path = zoo.weights_file(cfg["key"], input_shape=cfg["input_shape"], options=cfg["options"],
                                model_dir=Path(cfg["model_dir"]))
        resident = drop_page_cache(path)
        loaded = zoo.load_model(cfg["key"], input_shape=cfg["input_shape"], options=cfg["options"],
                                device=cfg["device"], model_dir=Path(cfg["model_dir"]))
        affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        conn.send(("ready", {"timings_ms": loaded.timings_ms, "weights_bytes": loaded.weights_bytes,
                             "marks": {"main": t_main, "imported": t_imported, "context": t_context},
                             "page_cache_resident": resident, "affinity": affinity,
                             "torch_threads": torch.get_num_threads(), "baseline_rss_bytes": baseline_rss}))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the cold start
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    cuda = loaded.device.type == "cuda"
    module = loaded.module
    make_batch = zoo.make_batch

    def run_batch(k: int) -> None:
        module(make_batch(loaded, k))
        if cuda:
            torch.cuda.synchronize(loaded.device)

    with torch.inference_mode():  # the instance only ever runs inference
        return _serve(conn.fileno(), run_batch)


def _serve(fd: int, run_batch) -> int:
    """The hot path, for every runtime: read a 4-byte batch size, run the batch, answer 1 byte (or an error with
    its text); a size of 0 or a closed socket ends the instance."""
    while True:
        try:
            k = _SIZE.unpack(_read_exactly(fd, 4))[0]
        except (EOFError, OSError):
            return 0
        if k <= 0:
            return 0
        try:
            run_batch(k)
            os.write(fd, _OK)
        except Exception as exc:  # noqa: BLE001 - a model error fails its batch, not the instance
            text = f"{type(exc).__name__}: {exc}".encode()[:4000]
            os.write(fd, _ERR + _SIZE.pack(len(text)) + text)


def _child_onnx(conn, cfg: dict, t_main: float) -> int:
    """The instance process of a model under ONNX Runtime: no torch import, the same wire protocol."""
    try:
        import onnxruntime  # noqa: F401 - the import is a timed phase of the cold start

        from workers import onnx_models

        t_imported = time.perf_counter()
        # On the CPU there is no device context to create; on CUDA the execution provider creates it inside the
        # session (counted in "session"): untested here (no GPU on CI).
        t_context = time.perf_counter()
        path = Path(cfg["model_file"])
        resident = drop_page_cache(path)
        loaded = onnx_models.load_session(path, device=cfg["device"], threads=cfg["threads"])
        affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        conn.send(("ready", {"timings_ms": loaded.timings_ms, "weights_bytes": loaded.weights_bytes,
                             "marks": {"main": t_main, "imported": t_imported, "context": t_context},
                             "page_cache_resident": resident, "affinity": affinity,
                             "torch_threads": int(cfg["threads"]), "provider": loaded.provider}))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the cold start
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    run = loaded.session.run
    make_feeds = onnx_models.make_feeds
    return _serve(conn.fileno(), lambda k: run(None, make_feeds(loaded, k)))

if __name__ == "__main__" and len(sys.argv) == 2:
    raise SystemExit(_child(int(sys.argv[1]), time.perf_counter()))
