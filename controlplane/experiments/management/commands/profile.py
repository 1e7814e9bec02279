"""Measure a profile of every distinct function model of an experiment spec file on the spec's device.

    manage.py profile examples/classifier-poc.json --short --json profiles.json

Each distinct (model, options, input shape) is measured in this process (workers.profiling, real instance
processes), under the device lease when Redis is reachable, and stored as a shared Profile (no owner) that
any experiment on the same model and device reuses. A progress line is printed per step, then a table per
profile: sharing level x batch size, p50 / p99 service time and the device throughput it implies.
Exit status: 0 when every profile succeeded, 1 otherwise.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments.lease import LeaseBusy
from controlplane.experiments.management.commands import run_experiment
from controlplane.experiments.models import Profile
from controlplane.experiments.profiles import services
from workers import devices, profiling


class Command(BaseCommand):
    help = "Profile every distinct function model of a spec file on its device and store the profiles."

    def add_arguments(self, parser):
        parser.add_argument("spec", help="experiment spec file (JSON or YAML)")
        parser.add_argument("--function", action="append", dest="functions", metavar="NAME",
                            help="only this function (repeatable)")
        parser.add_argument("--samples", type=int, help="timed batches per cell (default 30; short mode 5)")
        parser.add_argument("--short", action="store_true",
                            help="a quick look: batch sizes up to 4, few samples, one cold start")
        parser.add_argument("--json", dest="json_out", metavar="OUT", help="write {profiles: [...]} to this file")
        parser.add_argument("--owner", metavar="USER",
                            help="a user whose uploaded models the spec names: their profiles are theirs (default: "
                                 "shared profiles, built-in and installed models only)")

    def handle(self, *args, spec, functions, samples, short, json_out, owner=None, **options):
        owner_user = None
        if owner:
            owner_user = get_user_model().objects.filter(username=owner).first()
            if owner_user is None:
                raise CommandError(f"--owner {owner}: no such user")
        _data, exp = run_experiment.load_spec(spec, owner_user)
        chosen = [f for f in exp.functions if not functions or f.name in functions]
        missing = sorted(set(functions or ()) - {f.name for f in exp.functions})
        if missing:
            raise CommandError(f"no function {', '.join(missing)} in {spec} "
                               f"(functions: {', '.join(f.name for f in exp.functions)})")
        try:
            device = devices.resolve_device(exp.device).name
        except devices.DeviceError as exc:
            raise CommandError(str(exc)) from None
        try:
            asked = services.profile_settings(short=short, samples=samples)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

        todo: dict[str, tuple] = {}
        for f in chosen:
            key = profiling.profile_key(*profiling.function_profile_parts(f), device)
            todo.setdefault(key, (f, []))[1].append(f.name)
        conn = self._redis()
        worker = f"profile@{socket.gethostname()}"
        done: list[Profile] = []
        for f, names in todo.values():
            self.stdout.write(f"profiling {f.model} {json.dumps(f.options, sort_keys=True)} on {device} "
                              f"(function{'s' if len(names) > 1 else ''} {', '.join(names)})")
            model, options, shape = profiling.function_profile_parts(f)
            profile = services.profile_request(owner=owner_user if f.model_sha256 else None, model=model,
                                               options=options, input_shape=shape, device=device, asked=asked,
                                               enqueue=False)
            self._run(profile, worker, conn)
            profile.refresh_from_db()
            done.append(profile)
            if profile.status == Profile.Status.SUCCEEDED:
                self.stdout.write(f"  hardware: {profile.hardware}")
                self.stdout.write(profiling.format_table(profile.data))
                d = profile.data
                self.stdout.write(f"  runtime overhead p50 {d['overhead_us']['p50']:.1f} us, "
                                  f"p99 {d['overhead_us']['p99']:.1f} us; cold start p50 "
                                  f"{profiling.cold_start_table(d)[-1]['p50_ms']:.0f} ms; "
                                  f"peak memory {d['memory_bytes'] / 2**20:.0f} MiB")
                for s in d.get("skipped") or []:
                    what = f"level {s['level']}" if "level" in s else f"batch {s.get('batch_size')}"
                    self.stdout.write(f"  skipped {what}: {s['reason']}")
                self.stdout.write(f"  stored profile {profile.code}")
            else:
                self.stdout.write(f"  FAILED: {profile.error}")
        if json_out:
            document = {"spec": exp.name, "profiles": [p.data for p in done if p.data]}
            Path(json_out).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            self.stdout.write(f"wrote {json_out}")
        failed = [p for p in done if p.status != Profile.Status.SUCCEEDED]
        if failed:
            raise CommandError(f"{len(failed)} of {len(done)} profile(s) failed")

    def _redis(self):
        conn = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            conn.ping()
        except redis.RedisError:
            self.stderr.write("warning: Redis is not reachable: measuring without the device lease (make sure no "
                              "worker uses this device)")
            return None
        return conn

    def _run(self, profile: Profile, worker: str, conn) -> None:
        import time

        from workers.tasks import run_profile_by_id  # imports torch and Celery: only when measuring

        waited = False
        while True:
            try:
                run_profile_by_id(profile.id, worker=worker, redis_conn=conn,
                                  progress=lambda line: self.stdout.write(f"  {line}"))
                return
            except LeaseBusy as exc:
                if not waited:
                    self.stderr.write(f"waiting: {exc}")
                    waited = True
                time.sleep(2.0)
