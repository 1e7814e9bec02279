"""Run every variant x repeat of an experiment spec file on the SIMULATED driver and print a row per trial.

    manage.py simulate examples/classifier-poc.json --json sim.json
    manage.py simulate day.json --devices 8 --placement load_pack

The same experiment as `run_experiment`, on the platform's own scheduling core with a virtual clock: service
times and cold starts are drawn from profiles measured on this host's device (`manage.py profile`). A function
whose model has no profile yet is profiled first (real instance processes; --short for a quick one, --no-measure to
refuse instead). --profile FUNCTION=CODE pins a stored profile. The trials are stored like real ones, labelled
simulated, and appear on the experiment, comparison and report pages. --devices/--placement simulate a fleet.
Exit status: 0 when every trial succeeded, 1 when any failed.
"""

from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import CommandError

from controlplane.experiments import services
from controlplane.experiments.management.commands import run_experiment
from workers import devices, profiling
from workers import spec as S


class Command(run_experiment.Command):
    help = "Simulate all variants x repeats of a spec file from measured profiles, printing a row per trial."

    def add_arguments(self, parser):
        parser.add_argument("spec", help="experiment spec file (JSON or YAML)")
        parser.add_argument("--json", dest="json_out", metavar="OUT",
                            help="write {experiment, trials: [result rows]} to this file")
        parser.add_argument("--repeats", type=int, help="repeats per variant (overrides the spec's)")
        parser.add_argument("--owner", default=run_experiment.DEFAULT_OWNER,
                            help=f"username that owns the experiment (default {run_experiment.DEFAULT_OWNER})")
        parser.add_argument("--profile", action="append", default=[], metavar="FUNCTION=CODE",
                            help="simulate FUNCTION from this stored profile (repeatable)")
        parser.add_argument("--devices", type=int, default=1, help="simulated devices in the fleet (default 1)")
        parser.add_argument("--placement", default="first_fit",
                            help="how functions are placed on the devices: first_fit (memory) or load_pack")
        parser.add_argument("--short", action="store_true", help="profile missing models quickly (few samples)")
        parser.add_argument("--no-measure", dest="measure", action="store_false",
                            help="fail instead of profiling a model that has no profile yet")

    def handle(self, *args, spec, json_out, repeats, owner, profile, devices: int, placement: str, short: bool,
               measure: bool, **options):
        pinned = {}
        for item in profile:
            name, sep, code = item.partition("=")
            if not sep or not name or not code:
                raise CommandError(f"--profile {item!r}: expected FUNCTION=CODE")
            pinned[name] = code
        owner_user = self._owner(owner)
        try:
            simulate = services.simulation_options({"devices": devices, "placement": placement, "profiles": pinned})
        except S.SpecError as exc:
            raise CommandError("\n".join(str(e) for e in exc.errors)) from None
        data, exp = run_experiment.load_spec(spec, owner_user)
        self._measure_missing(spec, exp, pinned, measure=measure, short=short, owner=owner_user)
        experiment = self._import(owner_user, data)
        try:
            run = services.experiment_run(experiment=experiment, user=experiment.owner, repeats=repeats,
                                          enqueue=False, simulate=simulate)
        except S.SpecError as exc:
            raise CommandError("\n".join(str(e) for e in exc.errors)) from None
        fleet = f" on {devices} simulated devices ({placement})" if devices > 1 else ""
        self.stdout.write(f"{experiment.name}: run {run[0].run_number}, {len(run)} SIMULATED trial(s){fleet}")
        self.stdout.write(run_experiment.header())
        self._finish(run, experiment, json_out, self._run_inline(run))

    def _measure_missing(self, spec_path: str, exp, pinned: dict, *, measure: bool, short: bool, owner) -> None:
        """Profile the functions that have none on this device yet (`exp`: uploaded models resolved, as
        run_experiment.load_spec gives it)."""
        from controlplane.experiments.profiles.selectors import find_profile

        try:
            device = devices.resolve_device(exp.device).name
        except devices.DeviceError as exc:
            raise CommandError(str(exc)) from None
        missing, seen = [], set()
        for f in exp.functions:
            key = profiling.profile_key(*profiling.function_profile_parts(f), device)
            if f.name in pinned or key in seen:
                continue
            seen.add(key)
            if find_profile(*profiling.function_profile_parts(f), device, user=owner) is None:
                missing.append(f)
        if not missing:
            return
        names = ", ".join(f"{f.name} ({f.model})" for f in missing)
        if not measure:
            raise CommandError(f"no profile on {device} for {names}: run manage.py profile {spec_path} first")
        self.stdout.write(f"profiling first (no profile on {device} yet): {names}")
        args = [spec_path, *(a for f in missing for a in ("--function", f.name)), "--owner", owner.get_username()]
        call_command("profile", *args, *(["--short"] if short else []), stdout=self.stdout, stderr=self.stderr)
