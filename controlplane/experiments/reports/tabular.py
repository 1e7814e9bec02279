"""CSV, JSON and zip exports of a comparison: every figure comes from the comparison selector's dict.

Each renderer takes that dict (`comparison.experiment_comparison` / `compare_trials`) and returns bytes;
none computes a figure.

- CSV: one row per trial (each repeat of each variant), units in the headers. Cells hold the numbers the
  comparison page shows, in its units and rounding (`comparison_views._value_text`: `format_ms`,
  `format_percent`, `figures.format_usd` in the page's cost unit) without the unit symbols, so a spreadsheet
  reads them as numbers; "beyond the run" where the page says so, empty where the page shows "—".
- JSON: the selector's dict unchanged (raw floats, every figure) plus the run's frozen experiment spec, which
  `services.experiment_import` takes back to re-create the experiment and re-run it.
- zip: the CSV, the JSON, every other format a renderer exists for (HTML, PDF, slides), the raw per-request
  Parquet file of each trial and a README.txt that explains each Parquet column.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from workers.records import COLD_START_PHASES, ROW_COLUMNS, SIM_FULL_ROWS_MAX

from .. import comparison as C
from .. import spec_io
from ..comparison_views import _value_text
from ..models import Experiment, Trial

# the variant's latest finished capacity search (comparison row `capacity`), repeated on each of its trials' lines
CAPACITY_HEADERS = ("capacity at SLO (req/s)", "conservative capacity at SLO (req/s)", "capacity simulated")
JSON_FORMAT = "slsbench.comparison-export"
JSON_VERSION = 1
PAGE_UNITS = {"ms": "ms", "fraction": "%", "rps": "req/s", "count": "count"}


# ---- CSV ----------------------------------------------------------------------------------------------------
def _unit(metric: dict, scale: dict) -> str:
    if metric["unit"] == "usd":
        if metric["key"].startswith("monthly_"):
            return "USD per month"
        return f"USD {scale['label']}"
    return PAGE_UNITS.get(metric["unit"], metric["unit"])


def metric_header(metric: dict, scale: dict) -> str:
    """A CSV heading: the metric's label with its unit, as the page writes the value: "p99 (ms)"."""
    return f"{metric['label']} ({_unit(metric, scale)})"


def plain(text: str) -> str:
    """A page cell as a CSV number: "$0.0123" -> "0.0123", "1,234 ms" -> "1234", "0.4 %" -> "0.4".
    Texts that are not numbers ("beyond the run", "> drain (3 unfinished)") stay as they are; "—" is empty."""
    if text in ("—", "n/a", ""):
        return ""
    stripped = re.sub(r"^(-?)\$", r"\1", text.strip())
    stripped = re.sub(r" (ms|%)$", "", stripped).replace(",", "")
    try:
        float(stripped)
    except ValueError:
        return text
    return stripped


def trial_cell(metric: dict, figures: dict, scale: dict, *, included: bool) -> str:
    """One trial's figure written as the page writes it (the page's trial lines use the same helper)."""
    value = figures.get(metric["key"])
    beyond = metric["unit"] == "ms" and metric.get("beyond_run") and included and value is None
    return plain(_value_text(metric["unit"], metric["key"], value, scale, unfinished=figures.get("unfinished"),
                             beyond=bool(beyond)))


IDENTITY_HEADERS = ("experiment", "experiment code", "run", "variant", "row", "baseline", "trial", "repeat",
                    "status", "included in figures", "verdict", "verdict reasons", "SLO interval low (ms)",
                    "SLO interval high (ms)", "price", "re-priced", "dispatcher fell behind", "notes")


def csv_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    scale = data["display"]["cost_scale"]
    metrics = data["metrics"]
    header = [*IDENTITY_HEADERS, *(metric_header(m, scale) for m in metrics), *CAPACITY_HEADERS]
    out = []
    for row in data["rows"]:
        cap = row.get("capacity") or {}
        capacity = [plain(_value_text("rps", k, cap.get(k), scale)) for k in ("capacity_rps", "conservative_capacity_rps")]
        capacity.append(("yes" if cap["simulated"] else "no") if cap else "")
        for rep in row["repeats"]:
            ci = rep.get("slo_interval") or [None, None]
            exp = row.get("experiment") or {}
            out.append([
                exp.get("name", ""), exp.get("code", ""), "" if row["run"] is None else str(row["run"]),
                row["variant"], row["key"], "yes" if row["baseline"] else "", rep["trial"], str(rep["repeat"]),
                rep["status"], "yes" if rep["included"] else "no", rep["verdict"] or "", "; ".join(rep["reasons"] or []),
                "" if ci[0] is None else plain(C.format_ms(ci[0])), "" if ci[1] is None else plain(C.format_ms(ci[1])),
                rep.get("price") or "", "yes" if rep.get("repriced") else "",
                "yes" if rep.get("dispatch_behind") else "", "; ".join(rep.get("notes") or []),
                *(trial_cell(m, rep["figures"] or {}, scale, included=rep["included"]) for m in metrics), *capacity,
            ])
    return header, out


def render_csv(data: dict, **_options) -> bytes:
    header, rows = csv_rows(data)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


# ---- JSON ---------------------------------------------------------------------------------------------------
def _trial_codes(data: dict) -> list[str]:
    return [rep["trial"] for row in data["rows"] for rep in row["repeats"]]


def run_spec(data: dict) -> dict | None:
    """The experiment spec the run measured: its trials' frozen spec (the one RunSpec they share), else the
    experiment as stored now. None for a pinned set from several experiments."""
    scope = data["scope"]
    codes = _trial_codes(data)
    if scope.get("kind") == "run" and scope.get("experiment"):
        spec = Trial.objects.filter(code__in=codes).order_by("id").values_list("run_spec__spec", flat=True).first()
        if spec is not None:
            return spec
        exp = Experiment.objects.filter(code=scope["experiment"]["code"]).first()
        return spec_io.experiment_to_dict(exp) if exp else None
    experiments = {g["experiment"]["code"] for g in scope.get("groups") or []}
    if len(experiments) == 1:
        return (Trial.objects.filter(code__in=codes).order_by("-run_number", "id")
                .values_list("run_spec__spec", flat=True).first())
    return None


def json_document(data: dict) -> dict:
    return {
        "format": JSON_FORMAT, "version": JSON_VERSION,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        # `services.experiment_import(owner=..., data=document["spec"])` re-creates the experiment.
        "spec": run_spec(data),
        "comparison": data,
    }


def render_json(data: dict, **_options) -> bytes:
    return json.dumps(json_document(data), indent=1, allow_nan=False).encode("utf-8")


# ---- zip ----------------------------------------------------------------------------------------------------
# What each column of a trial's Parquet file means (workers.records.ROW_COLUMNS, workers.recorder.write_parquet).
COLUMN_MEANINGS = {
    "function": "index of the request's function in the experiment's functions (int16)",
    "intended_s": "scheduled arrival time, s on the run clock (0 = first intended arrival); open loop: latency "
                  "is measured from here",
    "sent_s": "when the dispatcher really handed the request to the platform, s (null: never sent)",
    "batch_start_s": "when compute of its batch began, s (null: never started)",
    "completed_s": "when its result was ready, s (null: not completed)",
    "instance": "id of the instance that ran it (-1: none)",
    "batch_size": "size of the batch it ran in (0: none)",
    "cold_wait_s": "part of its wait spent waiting for a cold start, s (the modelled platform delay included)",
    "modelled_wait_s": "of cold_wait_s: the MODELLED platform delay (platform_delay_ms), s",
    "batch_wait_s": "part of its wait when an instance was free but the batcher held it, s",
    "outcome": "0 pending, 1 ok, 2 dropped (shed by the adaptive batcher or never served before the run "
               "ended), 3 error (the model raised during its batch)",
    "latency_ms": "completed_s - intended_s in ms (null: not completed; the comparison counts such requests "
                  "as beyond the run, +inf); the file of a simulated trial of more than "
                  f"{SIM_FULL_ROWS_MAX:,} requests has only function, intended_s, sent_s, outcome and this "
                  "(float32), no per-request batch, wait or instance columns",
    "function_name": "the function's name (dictionary-encoded)",
    "outcome_name": "outcome as a word: pending, ok, dropped, error (dictionary-encoded)",
}
PHASE_MEANINGS = {"platform_delay_modelled": "the MODELLED platform delay (not measured)",
                  "process_start": "starting the instance's process", "import": "importing the runtime",
                  "device_context": "creating the device context", "build": "building the model",
                  "load": "reading the weights file", "session": "creating the ONNX Runtime session",
                  "to_device": "moving the weights to the device",
                  "warmup": "warm-up inference", "total": "the whole cold start"}


def readme_text(data: dict, files: list[tuple[str, str]], missing: list[str]) -> str:
    scope = data["scope"]
    exp = scope.get("experiment") or {}
    lines = [
        "slsbench comparison export",
        "",
        f"Experiment: {exp.get('name', 'pinned trials')}" + (f" ({exp['code']})" if exp.get("code") else ""),
        f"Run: {scope['run']}" if scope.get("run") is not None else "Runs: see comparison.json",
        f"Exported: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"Prices: {data['pricing']['note']}",
        "",
        "Files",
        "-----",
    ]
    lines += [f"{name}: {what}" for name, what in files]
    if missing:
        lines += ["", "Not included:"] + [f"- {m}" for m in missing]
    lines += [
        "",
        "Every figure in comparison.csv, comparison.json and the reports comes from the comparison selector and",
        "equals what the comparison page shows. The Parquet files hold one row per request of one trial, raw.",
        "",
        "Parquet columns (times in seconds on the run clock, 0 = the first intended arrival)",
        "-------------------------------------------------------------------------------",
    ]
    for name in (*ROW_COLUMNS, "latency_ms", "function_name", "outcome_name"):
        lines.append(f"{name}: {COLUMN_MEANINGS[name]}")
    for phase in COLD_START_PHASES:
        lines.append(f"cold_start_{phase}_ms: ms of the cold start this request waited for spent in "
                     f"{PHASE_MEANINGS.get(phase, phase)}; null when it waited for none")
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "x"


def parquet_files(data: dict) -> tuple[list[tuple[str, Path, str]], list[str]]:
    """(archive name, path, description) of each trial's stored Parquet artifact, and the trials without one."""
    codes = _trial_codes(data)
    trials = {str(t.code): t for t in Trial.objects.filter(code__in=codes).only(
        "code", "artifact", "variant_name", "repeat", "run_number", "status")}
    root = Path(settings.MEDIA_ROOT)
    found, missing = [], []
    for row in data["rows"]:
        for rep in row["repeats"]:
            t = trials.get(rep["trial"])
            name = f"{_safe(row['key'])}-repeat{rep['repeat']}-{rep['trial'][:8]}.parquet"
            path = root / t.artifact.name if t is not None and t.artifact else None
            if path is None or not path.is_file():
                missing.append(f"raw data of {row['label']} repeat {rep['repeat']} ({rep['status']}): none stored")
                continue
            found.append((f"raw/{name}", path, f"raw requests of {row['label']}, repeat {rep['repeat']} "
                                                f"(trial {rep['trial']})"))
    return found, missing


OTHER_FORMATS = (("html", "report.html", "the report, one self-contained file that opens offline"),
                 ("pdf", "report.pdf", "the report as a PDF"),
                 ("pptx", "slides.pptx", "about five slides for a meeting"))


def _other_renderers() -> dict[str, Callable[..., bytes]]:
    from . import RENDERERS  # late: the registry imports this module's renderers

    return {fmt: r.render for fmt, r in RENDERERS.items()}


def render_zip(data: dict, *, progress: Callable[[float, str], None] | None = None, **options) -> bytes:
    """Every other format (rendered with the same `options`: experiment, run, author, paper), the raw
    Parquet files and the README, in one archive."""
    say = progress or (lambda fraction, stage: None)
    renderers = _other_renderers()
    buf = io.BytesIO()
    files: list[tuple[str, str]] = []
    missing: list[str] = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        say(0.05, "CSV")
        zf.writestr("comparison.csv", render_csv(data))
        files.append(("comparison.csv", "one row per trial, units in the headers, as the comparison page writes them"))
        say(0.1, "JSON")
        zf.writestr("comparison.json", render_json(data))
        files.append(("comparison.json", "every figure (raw) and the experiment spec, to re-import and re-run"))
        steps = [f for f in OTHER_FORMATS if f[0] in renderers]
        for i, (fmt, name, what) in enumerate(steps):
            say(0.15 + 0.6 * i / max(len(steps), 1), fmt.upper())
            try:
                zf.writestr(name, renderers[fmt](data, **options))
            except Exception as exc:  # one failing document must not lose the raw data
                missing.append(f"{name}: could not be made ({type(exc).__name__}: {exc})")
                continue
            files.append((name, what))
        for fmt, name, _ in OTHER_FORMATS:
            if fmt not in renderers:
                missing.append(f"{name}: this installation cannot make {fmt.upper()} reports")
        say(0.8, "raw data")
        found, absent = parquet_files(data)
        for arcname, path, what in found:
            # Parquet is compressed already (zstd): stored, not deflated again.
            zf.write(path, arcname, compress_type=zipfile.ZIP_STORED)
            files.append((arcname, what))
        missing += absent
        zf.writestr("README.txt", readme_text(data, files, missing))
    say(1.0, "done")
    return buf.getvalue()
