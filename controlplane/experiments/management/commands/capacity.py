"""Find a variant's capacity at the SLO: the highest offered rate at which it still meets it.

    manage.py capacity examples/classifier-poc.json --variant dedicated --simulated --json cap.json
    manage.py capacity SPEC --variant NAME --probe-s 10 --budget 10

Keeps the workload's shape and scales its rate (workers.capacity): starts from batch-1 service time x instances,
brackets, then bisects with short probe trials until the bracket is within 5 % or the probe budget is spent. An
inconclusive probe is repeated longer before it counts. Prints a row per probe and the optimistic (highest rate not
`not_met`) and conservative (highest `met`) capacity, p99 and provisioned cost per 1,000 requests at that rate (the
spec's accelerator prices it, as for any trial).

The spec is imported for --owner (updated if that owner has an experiment of the same name, as `run_experiment`
does) and the search is a stored `CapacitySearch` of it, run in this process by the same code as the task behind the
comparison page's button and the API (controlplane.experiments.capacity): each probe is a normal trial, stored and
visible, of the experiment "<name> capacity <variant>" (that variant only), run under the device lease like
`run_experiment --inline`; Ctrl-C cancels the search. The comparison page of the imported experiment shows the
result in its "capacity at SLO" column.
--simulated runs the probes on the simulator from this host's stored profiles (measure one first: manage.py
profile SPEC).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path

from django.core.management.base import CommandError

from controlplane.experiments import capacity as services
from controlplane.experiments import spec_io
from controlplane.experiments.management.commands import run_experiment
from controlplane.experiments.models import CapacitySearch
from workers import capacity as C
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
                            help=f"username that owns the experiments (default {run_experiment.DEFAULT_OWNER})")

    def handle(self, *args, spec, variant, simulated, json_out, probe_s, budget, tolerance, owner, **options):
        owner_user = self._owner(owner)
        try:
            experiment = self._import(owner_user, spec_io.load_spec_file(spec))
            search = services.capacity_start(experiment=experiment, user=owner_user, enqueue=False, options={
                "variant": variant, "simulated": simulated, "budget": budget, "probe_s": probe_s,
                "tolerance": tolerance})
        except S.SpecError as exc:
            raise CommandError(f"{spec}: " + "; ".join(str(e) for e in exc.errors)) from None
        slo = experiment.slo
        self.stdout.write(f"{search.probes_experiment.name}: {'SIMULATED' if simulated else 'real'} capacity search "
                          f"{search.code} (SLO p{slo.percentile:g} <= {slo.latency_ms:g} ms)")
        self.stdout.write(f"{'rate req/s':>11} {'p99 ms':>9} {'run s':>6}  verdict        trial")

        def show(p: C.Probe) -> None:
            p99 = f"{p.p99_ms:9.1f}" if p.p99_ms is not None else f"{'-':>9}"
            again = "  (inconclusive: repeated longer)" if not p.counted else ""
            self.stdout.write(f"{p.rate_rps:11.2f} {p99} {p.run_s:6.1f}  {p.verdict:<13}  {p.trial}{again}")

        stop = threading.Event()
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda *_: (stop.set(), signal.signal(signal.SIGINT, previous)))
        try:
            services.capacity_run_by_id(search.id, worker=f"capacity@{socket.gethostname()}", redis_conn=self._redis(),
                                        stop=stop, on_probe=show, say=self.stderr.write)
        finally:
            signal.signal(signal.SIGINT, previous)
        search.refresh_from_db()
        if search.status == CapacitySearch.Status.FAILED:
            raise CommandError(f"the search failed: {search.error}")
        res = search.result
        out = {"experiment": search.probes_experiment.name, "experiment_code": str(search.probes_experiment.code),
               "search": str(search.code), "variant": search.variant_name, "simulated": simulated, **res}

        def num(x, unit=""):
            return f"{x:.3g}{unit}" if x is not None else "-"

        self.stdout.write(f"capacity {num(res['capacity_rps'], ' req/s')} (conservative "
                          f"{num(res['conservative_capacity_rps'], ' req/s')}), p99 "
                          f"{num(res['p99_ms_at_capacity'], ' ms')}, provisioned cost per 1k "
                          f"{num(res['cost_per_1k_usd_at_capacity'], ' USD')}; {len(res['probes'])} probes, "
                          f"{res['stopped']}")
        if json_out:
            Path(json_out).write_text(json.dumps(out, indent=2))
        if search.status == CapacitySearch.Status.CANCELLED:
            raise CommandError("interrupted: the search stopped", returncode=130)

    def _redis(self):
        import redis

        conn = redis.Redis.from_url(run_experiment._redis_url(), socket_timeout=2, socket_connect_timeout=2)
        try:
            conn.ping()
        except redis.RedisError:
            self.stderr.write("warning: Redis is not reachable: probes run without the device lease")
            return None
        return conn
