"""Create (or, with --update, replace) an experiment from a JSON or YAML spec file.

    manage.py import_spec examples/classifier-poc.json --owner alice
    manage.py import_spec examples/classifier-poc.yaml --owner alice --update 0b5c...-uuid

Prints the experiment's code and page URL. An invalid spec prints every problem on its own line with its
field path ("variants[1].batching.max_batch_size: must be between 1 and 1024"), exits non-zero and saves
nothing.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.http import Http404

from controlplane.experiments import selectors, services, spec_io
from workers import spec as S

DEFAULT_OWNER = "cli"  # the same default owner as run_experiment, so the two commands see each other's work
DEFAULT_BASE_URL = "http://localhost:8000"


class Command(BaseCommand):
    help = "Import an experiment spec file (JSON or YAML); prints the experiment's code and URL."

    def add_arguments(self, parser):
        parser.add_argument("spec", help="experiment spec file (.json, .yaml or .yml)")
        parser.add_argument("--owner", help=f"username that owns the experiment (default: {DEFAULT_OWNER!r}, "
                                            "created if missing; a named owner must exist)")
        parser.add_argument("--update", metavar="CODE", help="replace this experiment (of the owner) instead of "
                                                             "creating one; its code and trials stay")
        parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                            help=f"where the web app is served, for the printed URL (default {DEFAULT_BASE_URL})")

    def handle(self, *args, spec, owner, update, base_url, **options):
        user = self._owner(owner)
        existing = None
        if update:
            try:
                existing = selectors.experiment_get_for(user=user, code=update)
            except Http404:
                raise CommandError(f"no experiment {update} owned by {user.get_username()}") from None
        try:
            experiment = services.experiment_import(owner=user, data=spec_io.load_spec_file(spec),
                                                    experiment=existing)
        except S.SpecError as exc:
            n = len(exc.errors)
            lines = "\n".join(f"  {e.path or '(spec)'}: {e.message}" for e in exc.errors)
            raise CommandError(f"{spec}: invalid experiment spec, nothing saved ({n} problem{'s' * (n != 1)}):\n"
                               f"{lines}") from None
        self.stdout.write(f"{'updated' if existing else 'created'} experiment {experiment.name!r} "
                          f"({experiment.variants.count()} variants) for {user.get_username()}")
        self.stdout.write(f"code: {experiment.code}")
        self.stdout.write(f"url: {base_url.rstrip('/')}{experiment.get_absolute_url()}")

    def _owner(self, username: str | None):
        User = get_user_model()
        if username is None:
            user, created = User.objects.get_or_create(username=DEFAULT_OWNER)
            if created:
                user.set_unusable_password()  # a command-line owner never logs in until given a password
                user.save(update_fields=["password"])
            return user
        try:
            return User.objects.get(username=username)
        except User.DoesNotExist:
            # A typo must not quietly create an account that owns the experiment.
            raise CommandError(f"no user named {username!r} (create it with createsuperuser, or omit --owner)") \
                from None
