"""How far to trust the simulator here: run the same spec for real and simulated on this host, and compare.

    manage.py validate_simulator examples/simulator-validation.json --json fidelity.json

For each variant: one real trial (the engine on this host's device, as `run_experiment --inline` runs it, not
stored) and one simulated trial of the same seed from the functions' profiles (profiled first when missing, as
`simulate` does). Printed per variant: the relative error (simulated - real) / real of p50, p99, throughput and cold
starts. The result is stored on every profile used (Profile.validation), and the pages and reports show it beside
every result simulated from that profile.

`--real-runs N` (N >= 2) runs each variant N times for real, the same arrivals each time, compares the simulation
with the median of those runs and prints how far the real runs were from each other (`p50_real_spread`,
`p99_real_spread`: (max - min) / median): an error inside that spread says nothing about the simulator, only about
the host (on the 2-core development VM, the same 20-second unbatched run's p50 was 0.76, 1.20 and 0.85 ms in three
runs within 15 minutes).
"""

from __future__ import annotations

import io
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments.management.commands import run_experiment
from controlplane.experiments.management.commands.simulate import Command as SimulateCommand
from controlplane.experiments.models import Profile
from workers import devices
from workers import spec as S

METRICS = (("p50", "p50_rel_err"), ("p99", "p99_rel_err"), ("throughput", "throughput_rel_err"),
           ("cold_starts", "cold_starts_rel_err"))


def figures(summary: dict) -> dict:
    lat = summary.get("latency_ms") or {}
    return {"p50": lat.get("p50"), "p99": lat.get("p99"), "throughput": summary.get("throughput_rps"),
            "cold_starts": summary.get("cold_starts")}


def rel_err(sim, real) -> float | None:
    """(sim - real) / real; None when either is missing. Zero real cold starts: 0 if the simulation has none too."""
    if sim is None or real is None:
        return None
    if real == 0:
        return 0.0 if sim == 0 else None
    return (float(sim) - float(real)) / float(real)


def median_figures(reals: list[dict]) -> dict:
    """Per metric, the median over real runs' figures (those that have it)."""
    out = {}
    for key, _ in METRICS:
        xs = [f[key] for f in reals if f[key] is not None]
        out[key] = statistics.median(xs) if xs else None
    return out


def spread(xs: list) -> float | None:
    """(max - min) / median of the values present; None with fewer than two."""
    xs = [float(x) for x in xs if x is not None]
    mid = statistics.median(xs) if len(xs) >= 2 else 0.0
    return (max(xs) - min(xs)) / mid if mid else None


def compare(variant: str, real: list[dict], sim: dict) -> dict:
    """real: the summaries of the variant's real runs (the simulation is compared with their median; with two or
    more, the real runs' own spread of p50 and p99 is given)."""
    reals = [figures(x) for x in real]
    r, s = median_figures(reals), figures(sim)
    row = {"variant": variant}
    for key, name in METRICS:
        row[name] = rel_err(s[key], r[key])
    row["real"], row["simulated"] = r, s
    if len(reals) > 1:
        row["real_runs"] = reals
        row["p50_real_spread"] = spread([f["p50"] for f in reals])
        row["p99_real_spread"] = spread([f["p99"] for f in reals])
    return row


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:+.1f}%"


def _share(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


class Command(BaseCommand):
    help = "Run a spec for real and simulated on this host and print the simulator's relative errors per variant."

    def add_arguments(self, parser):
        parser.add_argument("spec", help="experiment spec file (JSON or YAML); keep it short: it runs for real")
        parser.add_argument("--json", dest="json_out", nargs="?", const="-", metavar="OUT",
                            help="write the result as JSON to OUT (or stdout with no OUT)")
        parser.add_argument("--short", action="store_true", help="profile missing models quickly (few samples)")
        parser.add_argument("--owner", default=run_experiment.DEFAULT_OWNER,
                            help="username whose uploaded models the spec may name and whose profiles it may use "
                                 f"(default {run_experiment.DEFAULT_OWNER})")
        parser.add_argument("--real-runs", type=int, default=1, metavar="N",
                            help="real runs per variant (default 1); with 2 or more the simulation is compared with "
                                 "their median and their own spread is printed: the host's noise floor")

    def handle(self, *args, spec, json_out, short, owner=run_experiment.DEFAULT_OWNER, real_runs=1, **options):
        from workers.engine import TrialFailed, run_trial
        from workers.tasks import simulation_profiles

        if not 1 <= real_runs <= 10:
            raise CommandError(f"--real-runs: 1 to 10, not {real_runs}")
        owner_user = SimulateCommand()._owner(owner)
        _data, exp = run_experiment.load_spec(spec, owner_user)
        too_big = S.real_run_errors(exp)
        if too_big:
            raise CommandError("the spec is too big to run for real:\n" + "\n".join(f"  {e}" for e in too_big))
        out = self.stdout if json_out != "-" else io.StringIO()
        helper = SimulateCommand(stdout=out, stderr=self.stderr)
        helper._measure_missing(spec, exp, {}, measure=True, short=short, owner=owner_user)
        device = devices.resolve_device(exp.device).name
        profiles = simulation_profiles(S.TrialSpec(exp, exp.variants[0]), device, owner=owner_user)
        rows = []
        model_dir = Path(settings.MODEL_DIR)
        for v in exp.variants:
            ts = S.TrialSpec(exp, v)
            out.write(f"{v.name}: real run{'s' if real_runs > 1 else ''}…")
            try:
                real = [run_trial(ts, model_dir=model_dir).summary for _ in range(real_runs)]
                sim = run_trial(ts, model_dir=model_dir, profiles=profiles).summary
            except TrialFailed as exc:
                raise CommandError(f"variant {v.name}: {exc}") from None
            row = compare(v.name, real, sim)
            rows.append(row)
            line = "  " + "  ".join(f"{k} {_pct(row[name])}" for k, name in METRICS)
            if real_runs > 1:
                line += (f"  (the {real_runs} real runs spread p50 {_share(row['p50_real_spread'])}, "
                         f"p99 {_share(row['p99_real_spread'])})")
            out.write(line)
        result = {"spec": exp.name, "device": device, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                  "real_runs": real_runs,
                  "profiles": [p["id"] for p in profiles], "variants": rows}
        self._table(out, rows)
        self._store(result, profiles)
        if json_out == "-":
            self.stdout.write(json.dumps(result, allow_nan=False))
        elif json_out:
            Path(json_out).write_text(json.dumps(result, indent=2, allow_nan=False))

    def _table(self, out, rows: list[dict]) -> None:
        out.write(f"{'variant':20} {'p50 real':>9} {'sim':>9} {'err':>8} {'p99 real':>9} {'sim':>9} {'err':>8} "
                  f"{'thr err':>8} {'cold real':>9} {'sim':>5} {'err':>8}")
        for r in rows:
            re, si = r["real"], r["simulated"]

            def ms(v):
                return "-" if v is None else f"{v:.3f}"

            out.write(f"{r['variant']:20} {ms(re['p50']):>9} {ms(si['p50']):>9} {_pct(r['p50_rel_err']):>8} "
                      f"{ms(re['p99']):>9} {ms(si['p99']):>9} {_pct(r['p99_rel_err']):>8} "
                      f"{_pct(r['throughput_rel_err']):>8} {re['cold_starts']!s:>9} {si['cold_starts']!s:>5} "
                      f"{_pct(r['cold_starts_rel_err']):>8}")

    def _store(self, result: dict, profiles: list[dict]) -> None:
        brief = {"date": result["date"], "spec": result["spec"], "device": result["device"],
                 "variants": [{k: r[k] for k in ("variant", *(n for _, n in METRICS))} for r in result["variants"]]}
        errs = [abs(r[n]) for r in result["variants"] for n in ("p50_rel_err", "p99_rel_err") if r[n] is not None]
        brief["max_latency_rel_err"] = max(errs) if errs else None
        Profile.objects.filter(code__in=result["profiles"]).update(validation=brief)

