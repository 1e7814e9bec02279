"""Experiment specs in and out of the database, and spec files in and out of the file system.

The stored rows and `workers.spec.ExperimentSpec` describe the same thing; this module converts between
them (the writes themselves are in `services`). The canonical spec dict (`experiment_to_dict`) is the
one document format shared by spec files, the REST API and the frozen `Trial.spec`: exporting an
experiment and importing the result gives the same experiment back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from workers import spec as S

from . import limits
from .models import Experiment, SLOTarget

YAML_SUFFIXES = (".yaml", ".yml")
# A spec file itself is small; the trace it points at has its own bound (S.MAX_TRACE_BYTES).
MAX_SPEC_FILE_BYTES = 2 * 1024 * 1024


# ---- database -> spec ------------------------------------------------------------------------------
def experiment_to_spec(experiment: Experiment) -> S.ExperimentSpec:
    """The stored experiment as the plain spec the engine and the validator understand."""
    try:
        slo = experiment.slo.to_spec()
    except SLOTarget.DoesNotExist:
        # Only rows made outside the services (admin, shell) lack one; they get the spec's default SLO.
        slo = S.SLOSpec()
    variants = [v.to_spec() for v in experiment.variants.all() if not v.from_sweep]
    sweep = None
    if experiment.sweep:
        # The sweep's variants come from expanding it again (deterministic), not from their rows: the
        # spec, not the rows, says what a generated variant is.
        sweep, generated = S.parse_sweep(experiment.sweep, variants)
        variants += generated
    return S.ExperimentSpec(
        name=experiment.name,
        description=experiment.description,
        notes=experiment.notes,
        device=experiment.device,
        accelerator=experiment.accelerator.name if experiment.accelerator_id else None,
        slo=slo,
        functions=tuple(f.to_spec() for f in experiment.functions.all()),
        workloads=tuple(w.to_spec() for w in experiment.workloads.select_related("function")),
        variants=tuple(variants),
        sweep=sweep,
    )


def experiment_to_dict(experiment: Experiment) -> dict:
    """The canonical spec dict of a stored experiment (trace text inlined as `trace_content`)."""
    return S.experiment_to_dict(experiment_to_spec(experiment))


# ---- spec files ------------------------------------------------------------------------------------
def load_spec_file(path: str | Path) -> dict:
    """Read a JSON or YAML spec file into a spec dict ready for `parse_experiment`.

    YAML is chosen by the extension (.yaml / .yml); any other file is read as JSON, falling back to YAML
    when it is not JSON. A workload's `trace_path` is read relative to the spec file's folder and
    replaced by its text in `trace_content` (the file name goes to `trace_filename` unless one is
    given). Every problem is raised as a SpecError naming the field.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise S.SpecError([S.FieldError("", f"cannot read spec file {str(path)!r}: {exc.strerror or exc}")]) from exc
    if size > MAX_SPEC_FILE_BYTES:
        raise S.SpecError([S.FieldError("", f"spec file is larger than {MAX_SPEC_FILE_BYTES // (1024 * 1024)} MiB "
                                            "(put traces in their own file and name it in trace_path)")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise S.SpecError([S.FieldError("", f"spec file is not UTF-8 text: {exc.reason} at byte {exc.start}")]) from exc
    data = parse_spec_text(text, yaml_first=path.suffix.lower() in YAML_SUFFIXES)
    if isinstance(data, dict):
        _inline_traces(data, path.parent)
    return data


def parse_spec_text(text: str, *, yaml_first: bool = False) -> Any:
    """Decode a spec document (JSON, or YAML when `yaml_first` or when it is not JSON), within the bounds of
    `limits`: at most MAX_SPEC_FILE_BYTES, nesting and YAML aliases checked before the document is built."""
    if len(text) > MAX_SPEC_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_FILE_BYTES:
        raise S.SpecError([S.FieldError("", f"the document is larger than {MAX_SPEC_FILE_BYTES // (1024 * 1024)} MiB "
                                            "(put traces in their own file and name it in trace_path)")])
    data = _decode(text, yaml_first=yaml_first)
    limits.check_document(data)
    return data


def _decode(text: str, *, yaml_first: bool) -> Any:
    if not yaml_first:
        limits.check_json_depth(text)  # YAML's flow style nests with the same brackets: refused either way
        try:
            return json.loads(text)
        except RecursionError:  # the scan above should have refused it; never a 500 if it did not
            raise limits.too_deep() from None
        except json.JSONDecodeError as exc:
            # A file that looks like JSON gets the JSON error: it is almost certainly a JSON typo.
            if text.lstrip().startswith(("{", "[")):
                raise S.SpecError([S.FieldError("", f"not valid JSON: {exc.msg} (line {exc.lineno}, "
                                                    f"column {exc.colno})")]) from exc
    try:
        # Safe constructors: a spec file never constructs Python objects.
        limits.check_yaml_shape(text)
        return yaml.load(text, Loader=limits.SafeLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise S.SpecError([S.FieldError("", f"not valid YAML or JSON: {problem}{where}")]) from exc


def _workload_entries(data: dict) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    if isinstance(data.get("workload"), dict):
        out.append(("workload", data["workload"]))
    if isinstance(data.get("workloads"), list):
        out.extend((f"workloads[{i}]", w) for i, w in enumerate(data["workloads"]) if isinstance(w, dict))
    return out


def _inline_traces(data: dict, base_dir: Path) -> None:
    errors: list[S.FieldError] = []
    for path, workload in _workload_entries(data):
        if "trace_path" not in workload:
            continue
        field = f"{path}.trace_path"
        rel = workload.pop("trace_path")
        if "trace_content" in workload:
            errors.append(S.FieldError(field, "give either trace_path or trace_content, not both"))
            continue
        if not isinstance(rel, str) or not rel.strip():
            errors.append(S.FieldError(field, "must be a file path (relative to the spec file)"))
            continue
        trace_file = (base_dir / rel).resolve()
        try:
            size = trace_file.stat().st_size
            if not trace_file.is_file():
                errors.append(S.FieldError(field, f"{rel!r} is not a file"))
                continue
        except OSError as exc:
            errors.append(S.FieldError(field, f"cannot read {rel!r}: {exc.strerror or exc}"))
            continue
        if size > S.MAX_TRACE_BYTES:
            errors.append(S.FieldError(field, f"{rel!r} is {size / (1024 * 1024):.1f} MiB; traces may be at most "
                                              f"{S.MAX_TRACE_BYTES // (1024 * 1024)} MiB"))
            continue
        try:
            workload["trace_content"] = trace_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            errors.append(S.FieldError(field, f"{rel!r} is not UTF-8 text (byte {exc.start})"))
            continue
        workload.setdefault("trace_filename", trace_file.name)
    if errors:
        raise S.SpecError(errors)


def dump_spec(data: dict, *, as_yaml: bool = False) -> str:
    """Serialise a spec dict for a file: JSON (2-space indent) or YAML (keys in the canonical order)."""
    if as_yaml:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
