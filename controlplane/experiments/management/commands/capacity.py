"""Find a variant's capacity at the SLO: the highest offered rate at which it still meets it.

    manage.py capacity examples/classifier-poc.json --variant baseline --simulated --json cap.json
    manage.py capacity SPEC --variant NAME --probe-s 10 --budget 10

Keeps the workload's shape and scales its rate (workers.capacity): starts from batch-1 service time x instances,
brackets, then bisects with short probe trials until the bracket is within 5 % or the probe budget is spent. An
inconclusive probe is repeated longer before it counts. Prints a row per probe and the optimistic (highest rate not
`not_met`) and conservative (highest `met`) capacity, p99 and provisioned cost per 1,000 requests at that rate
(--price NAME, default the spec's accelerator). --simulated draws from this host's stored profiles (measure one
first: manage.py profile SPEC). Probes run in this process through the engine (not queued, not stored as trials,
no device lease: do not run it beside workers that use the same device).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments import spec_io
from workers import capacity as C
from workers import devices
from workers import spec as S


class Command(BaseCommand):
    help = "Search the highest offered rate at which a variant meets its SLO (real or simulated probes)."

    def add_arguments(self, parser):
        parser.add_argument("spec", help="experiment spec file (JSON or YAML)")
        parser.add_argument("--variant", required=True, help="the variant's name")
        parser.add_argument("--simulated", action="store_true", help="probe on the simulator (stored profiles)")
        parser.add_argument("--json", dest="json_out", metavar="OUT", help="write the result as JSON here")
        parser.add_argument("--probe-s", type=float, default=None,
                            help="wall seconds per probe for constant/poisson/gamma workloads (default: the spec's; "
                                 "under 10 s the p99's interval cannot be computed and every probe is inconclusive)")
        parser.add_argument("--budget", type=int, default=C.DEFAULT_BUDGET, help="most probes (default %(default)s)")
        parser.add_argument("--tolerance", type=float, default=C.DEFAULT_TOLERANCE,
                            help="stop when the bracket is this close (default 0.05)")
        parser.add_argument("--price", default=None, help="price entry for the cost (default: the spec's accelerator)")

    def handle(self, *args, spec, variant, simulated, json_out, probe_s, budget, tolerance, price, **options):
        try:
            exp = S.parse_experiment(spec_io.load_spec_file(spec))
        except S.SpecError as exc:
            raise CommandError(f"{spec}: invalid:\n" + "\n".join(f"  {e}" for e in exc.errors)) from None
        var = next((v for v in exp.variants if v.name == variant), None)
        if var is None:
            raise CommandError(f"no variant {variant!r} (variants: {', '.join(v.name for v in exp.variants)})")
        trial = S.TrialSpec(exp, var, price=self._price(price or exp.accelerator))
        try:
            C.offered_rate_rps(trial)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        tmp = Path(tempfile.mkdtemp(prefix="capacity-"))
        probe, estimate = (self._simulated(trial, tmp) if simulated else self._real(trial, tmp))
        self.stdout.write(f"{exp.name} / {var.name}: {'SIMULATED' if simulated else 'real'} capacity search from "
                          f"{estimate:.1f} req/s (SLO p{exp.slo.percentile:g} <= {exp.slo.latency_ms:g} ms)")
        self.stdout.write(f"{'rate req/s':>11} {'p99 ms':>9} {'run s':>6}  verdict")

        def show(p: C.Probe) -> None:
            p99 = f"{p.p99_ms:9.1f}" if p.p99_ms is not None else f"{'-':>9}"
            again = "  (repeated: inconclusive)" if not p.counted else ""
            self.stdout.write(f"{p.rate_rps:11.2f} {p99} {p.run_s:6.1f}  {p.verdict}{again}")

        res = C.search(trial, probe, estimate=estimate, probe_run_s=probe_s, tolerance=tolerance, budget=budget,
                       on_probe=show)
        out = {"experiment": exp.name, "variant": var.name, "simulated": simulated,
               "price": trial.price.name if trial.price else None, **res.to_dict()}

        def num(x, unit=""):
            return f"{x:.2f}{unit}" if x is not None else "-"

        self.stdout.write(f"capacity {num(res.capacity_rps, ' req/s')} (conservative "
                          f"{num(res.conservative_capacity_rps, ' req/s')}), p99 {num(res.p99_ms_at_capacity, ' ms')}, "
                          f"provisioned cost per 1k {num(res.cost_per_1k_usd_at_capacity, ' USD')}; "
                          f"{len(res.probes)} probes, {res.stopped}")
        if json_out:
            Path(json_out).write_text(json.dumps(out, indent=2))

    @staticmethod
    def _price(name: str | None) -> S.PriceSpec | None:
        if not name:
            return None
        from controlplane.experiments.models import PriceEntry

        entry = PriceEntry.objects.filter(name=name).first()
        if entry is None:
            raise CommandError(f"no price entry {name!r}")
        return entry.to_spec()

    def _simulated(self, trial: S.TrialSpec, tmp: Path):
        from workers.engine import TrialFailed, run_trial
        from workers.tasks import simulation_profiles

        try:
            device = devices.resolve_device(trial.experiment.device).name
            profiles = simulation_profiles(trial, device)
        except (LookupError, devices.DeviceError) as exc:
            raise CommandError(str(exc)) from None
        estimate = C.estimate_rps(trial, [C.profile_batch1_ms(p) for p in profiles])
        n = iter(range(10**6))

        def probe(ts: S.TrialSpec):
            try:
                return run_trial(ts, profiles=profiles, artifact_path=tmp / f"p{next(n)}.parquet").summary, ""
            except TrialFailed as exc:
                raise CommandError(f"probe failed: {exc}") from None

        return probe, estimate

    def _real(self, trial: S.TrialSpec, tmp: Path):
        from workers.engine import TrialFailed, run_trial

        n = iter(range(10**6))

        def probe(ts: S.TrialSpec):
            errors = S.real_run_errors(ts.experiment)
            if errors:
                raise CommandError("probe cannot run for real: " + "; ".join(str(e) for e in errors))
            try:
                return run_trial(ts, artifact_path=tmp / f"p{next(n)}.parquet").summary, ""
            except TrialFailed as exc:
                raise CommandError(f"probe failed: {exc}") from None

        # the estimate: the median latency of a probe at the spec's own rate stands in for batch-1 service time
        # (close to it when the spec's rate is light; this first probe is not part of the search)
        first, _ = probe(trial)
        p50 = (first.get("latency_ms") or {}).get("p50") or 1.0
        n_fn = len(trial.experiment.functions)
        estimate = C.estimate_rps(trial, [p50] * n_fn)
        self.stdout.write(f"estimate from a probe at the spec's rate: p50 {p50:.1f} ms")
        return probe, estimate
