"""Find a variant's capacity at the SLO: the highest offered rate at which it still meets it.

    manage.py capacity examples/classifier-poc.json --variant dedicated --simulated --json cap.json
    manage.py capacity SPEC --variant NAME --probe-s 10 --budget 10

Keeps the workload's shape and scales its rate (workers.capacity): starts from batch-1 service time x instances,
brackets, then bisects with short probe trials until the bracket is within 5 % or the probe budget is spent. An
inconclusive probe is repeated longer before it counts. Prints a row per probe and the optimistic (highest rate not
`not_met`) and conservative (highest `met`) capacity, p99 and provisioned cost per 1,000 requests at that rate (the
spec's accelerator prices it, as for any trial).

Each probe is a normal trial, stored and visible: the spec is imported for --owner as the experiment
"<name> capacity <variant>" (that variant only), whose workload is set to each probe's rate before the probe runs
as one run of it in this process (under the device lease, like `run_experiment --inline`; Ctrl-C cancels it).
--simulated runs the probes on the simulator from this host's stored profiles (measure one first: manage.py
profile SPEC).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import threading
from pathlib import Path

import redis
from django.core.management.base import CommandError

from controlplane.experiments import services, spec_io
from controlplane.experiments.management.commands import run_experiment
from controlplane.experiments.models import Trial
from workers import capacity as C
from workers import devices
from workers import spec as S


class Command(run_experiment.Command):
    help = "Search the highest offered rate at which a variant meets its SLO (probes stored as trials)."

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
        parser.add_argument("--owner", default=run_experiment.DEFAULT_OWNER,
                            help=f"username that owns the probes' experiment (default {run_experiment.DEFAULT_OWNER})")

    def handle(self, *args, spec, variant, simulated, json_out, probe_s, budget, tolerance, owner, **options):
        try:
            exp = S.parse_experiment(spec_io.load_spec_file(spec))
        except S.SpecError as exc:
            raise CommandError(f"{spec}: invalid:\n" + "\n".join(f"  {e}" for e in exc.errors)) from None
        var = next((v for v in exp.variants if v.name == variant), None)
        if var is None:
            raise CommandError(f"no variant {variant!r} (variants: {', '.join(v.name for v in exp.variants)})")
        name = f"{exp.name} capacity {var.name}"[:200]
        exp = dataclasses.replace(exp, name=name, variants=(dataclasses.replace(var, repeats=1),), sweep=None)
        trial = S.TrialSpec(exp, exp.variants[0])
        try:
            C.offered_rate_rps(trial)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.owner_user = self._owner(owner)
        # simulated: the profiles first, so a missing one stores nothing
        estimate = self._estimate(trial, simulated) if simulated else None
        self.experiment = self._import(self.owner_user, S.experiment_to_dict(exp))
        self.simulate = services.simulation_options({}) if simulated else None
        self.conn = self._redis()
        self.stop = threading.Event()
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda *_: (self.stop.set(), signal.signal(signal.SIGINT, previous)))
        try:
            if estimate is None:
                estimate = self._estimate(trial, simulated)
            self.stdout.write(f"{exp.name}: {'SIMULATED' if simulated else 'real'} capacity search from "
                              f"{estimate:.1f} req/s (SLO p{exp.slo.percentile:g} <= {exp.slo.latency_ms:g} ms)")
            self.stdout.write(f"{'rate req/s':>11} {'p99 ms':>9} {'run s':>6}  verdict        trial")

            def show(p: C.Probe) -> None:
                p99 = f"{p.p99_ms:9.1f}" if p.p99_ms is not None else f"{'-':>9}"
                again = "  (inconclusive: repeated longer)" if not p.counted else ""
                self.stdout.write(f"{p.rate_rps:11.2f} {p99} {p.run_s:6.1f}  {p.verdict:<13}  {p.trial}{again}")

            res = C.search(trial, self._probe, estimate=estimate, probe_run_s=probe_s, tolerance=tolerance,
                           budget=budget, on_probe=show, should_stop=self.stop.is_set)
        finally:
            signal.signal(signal.SIGINT, previous)
        out = {"experiment": exp.name, "experiment_code": str(self.experiment.code), "variant": var.name,
               "simulated": simulated, **res.to_dict()}

        def num(x, unit=""):
            return f"{x:.3g}{unit}" if x is not None else "-"

        self.stdout.write(f"capacity {num(res.capacity_rps, ' req/s')} (conservative "
                          f"{num(res.conservative_capacity_rps, ' req/s')}), p99 {num(res.p99_ms_at_capacity, ' ms')}, "
                          f"provisioned cost per 1k {num(res.cost_per_1k_usd_at_capacity, ' USD')}; "
                          f"{len(res.probes)} probes, {res.stopped}")
        if json_out:
            Path(json_out).write_text(json.dumps(out, indent=2))
        if res.stopped == "cancelled":
            raise CommandError("interrupted: the search stopped", returncode=130)

    def _redis(self):
        conn = redis.Redis.from_url(run_experiment._redis_url(), socket_timeout=2, socket_connect_timeout=2)
        try:
            conn.ping()
        except redis.RedisError:
            self.stderr.write("warning: Redis is not reachable: probes run without the device lease")
            return None
        return conn

    def _probe(self, ts: S.TrialSpec) -> tuple[dict, str]:
        """One probe: the experiment's workload set to this probe's, then one run of it, in this process."""
        try:
            services.experiment_update(experiment=self.experiment, spec=ts.experiment)
            run = services.experiment_run(experiment=self.experiment, user=self.owner_user, repeats=1,
                                          enqueue=False, simulate=self.simulate)
        except S.SpecError as exc:
            raise CommandError("probe: " + "; ".join(str(e) for e in exc.errors)) from None
        t = run[0]
        if self.stop.is_set():
            services.trial_cancel(trial=t)
        else:
            self._run_one_inline(t, f"capacity@{socket.gethostname()}", self.conn, self.stop)
        t.refresh_from_db()
        if t.status == Trial.Status.FAILED:
            raise CommandError(f"probe trial {t.code} failed: {t.error}")
        if t.status != Trial.Status.SUCCEEDED:
            return {"slo_verdict": {"verdict": "inconclusive"}}, str(t.code)  # cancelled: stop is set, search ends
        return t.summary, str(t.code)

    def _estimate(self, trial: S.TrialSpec, simulated: bool) -> float:
        if simulated:
            from workers.tasks import simulation_profiles

            try:
                device = devices.resolve_device(trial.experiment.device).name
                profiles = simulation_profiles(trial, device, owner=self.owner_user)
            except (LookupError, devices.DeviceError) as exc:
                raise CommandError(str(exc)) from None
            return C.estimate_rps(trial, [C.profile_batch1_ms(p) for p in profiles])
        # Real: the median latency of a probe at the spec's own rate stands in for batch-1 service time (close to
        # it when that rate is light). This probe is stored like the others but is not part of the search.
        summary, code = self._probe(trial)
        p50 = (summary.get("latency_ms") or {}).get("p50") or 1.0
        self.stdout.write(f"estimate from a probe at the spec's rate (trial {code}): p50 {p50:.1f} ms")
        return C.estimate_rps(trial, [p50] * len(trial.experiment.functions))
