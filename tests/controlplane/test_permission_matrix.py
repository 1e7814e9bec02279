"""Permissions as a matrix: every URL pattern, API route, download and WebSocket route, as anonymous, owner
and another user. Another user gets 404 for anything of the owner's and finds nothing of theirs in lists;
anonymous visitors are sent to the login page (pages) or get 401 (API).

`test_every_url_pattern_is_in_the_matrix` walks the URL resolver: a pattern added without an entry here fails
it, so the matrix stays complete.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from controlplane.experiments import capacity, services
from controlplane.experiments.models import Pin, PriceEntry, ShareLink
from controlplane.experiments.reports import exports
from controlplane.experiments.routing import websocket_urlpatterns

from . import test_consumers
from .test_comparison import finish, run, summary, variant
from .test_profiles import stored

pytestmark = pytest.mark.django_db

OWNED = "owned"  # login; one object of the owner's in the URL: another user 404, the owner gets in
LIST = "list"  # login; no object in the URL: another user gets 200 and nothing of the owner's
STAFF = "staff"  # login and staff: others 403
LOGIN = "login"  # login, nothing owned (the user's own settings)
PUBLIC = "public"  # no login by design (login itself, password reset, a share link)
TOKEN = "token"  # no login: a bearer token from the settings (METRICS_TOKEN); 401 without it, signed in or not


@dataclass(frozen=True)
class Entry:
    access: str
    methods: tuple[str, ...] = ("GET",)
    obj: str | None = None  # which of the owner's objects the URL names: experiment, trial, export, ...
    api: bool = False  # API: 401 for anonymous (pages redirect to the login page)


E, T, X = "experiment", "trial", "export"
MATRIX: dict[str, Entry] = {
    # pages
    "experiment-list": Entry(LIST),
    "experiment-create": Entry(LIST, ("GET", "POST")),
    "experiment-import": Entry(LIST, ("GET", "POST")),
    "workload-preview": Entry(LIST, ("POST",)),
    "experiment-detail": Entry(OWNED, obj=E),
    "experiment-edit": Entry(OWNED, ("GET", "POST"), obj=E),
    "experiment-trials": Entry(OWNED, obj=E),
    "experiment-run": Entry(OWNED, ("POST",), obj=E),
    "experiment-cancel": Entry(OWNED, ("POST",), obj=E),
    "experiment-delete": Entry(OWNED, ("GET", "POST"), obj=E),
    "experiment-clone": Entry(OWNED, ("POST",), obj=E),
    "experiment-export": Entry(OWNED, obj=E),  # download: the spec file
    "experiment-compare": Entry(OWNED, obj=E),
    "experiment-sweep": Entry(OWNED, obj=E),
    "experiment-compare-data": Entry(OWNED, obj=E),
    "variant-clone": Entry(OWNED, ("POST",), obj="variant"),
    "experiment-exports": Entry(OWNED, ("POST",), obj=E),
    "experiment-share": Entry(OWNED, ("GET", "POST"), obj=E),
    "export-detail": Entry(OWNED, obj=X),
    "export-status": Entry(OWNED, obj=X),
    "export-download": Entry(OWNED, obj=X),  # download: a report file
    "share-link-revoke": Entry(OWNED, ("POST",), obj="share-link"),
    "shared-report": Entry(PUBLIC, obj="share-token"),  # download: anyone with the token, nothing else
    "trial-detail": Entry(OWNED, obj=T),
    "trial-cancel": Entry(OWNED, ("POST",), obj=T),
    "trial-artifact": Entry(OWNED, obj=T),  # download: the raw Parquet rows
    "trial-pin": Entry(OWNED, ("POST",), obj=T),
    "trial-unpin": Entry(OWNED, ("POST",), obj=T),
    "compare-pinned": Entry(LIST),
    "compare-pinned-data": Entry(LIST),
    "pins-clear": Entry(LIST, ("POST",)),
    "compare-pinned-exports": Entry(LIST, ("POST",)),
    "price-list": Entry(LIST),
    "price-create": Entry(STAFF, ("POST",)),
    "price-edit": Entry(STAFF, ("GET", "POST"), obj="price"),
    "account-token": Entry(LOGIN, ("GET", "POST")),
    "experiment-profile": Entry(OWNED, ("POST",), obj=E),
    "profile-list": Entry(LIST),
    "profile-detail": Entry(OWNED, obj="profile"),
    "profile-json": Entry(OWNED, obj="profile"),  # download: the measured profile
    "experiment-capacity": Entry(OWNED, ("POST",), obj=E),  # the comparison page's "Capacity at SLO" form
    "capacity-detail": Entry(OWNED, obj="capacity"),
    "capacity-cancel": Entry(OWNED, ("POST",), obj="capacity"),
    # API
    "api-schema": Entry(LIST, api=True),
    "api-docs": Entry(LIST),  # a page: login redirect
    "api-token": Entry(PUBLIC, ("POST",), api=True),  # username + password; DELETE revokes your own
    "api-experiment-list": Entry(LIST, ("GET", "POST"), api=True),
    "api-experiment-detail": Entry(OWNED, ("GET", "PUT", "DELETE"), obj=E, api=True),
    "api-experiment-run": Entry(OWNED, ("POST",), obj=E, api=True),
    "api-experiment-cancel": Entry(OWNED, ("POST",), obj=E, api=True),
    "api-experiment-spec": Entry(OWNED, obj=E, api=True),
    "api-experiment-clone": Entry(OWNED, ("POST",), obj=E, api=True),
    "api-experiment-results": Entry(OWNED, obj=E, api=True),
    "api-experiment-trials": Entry(OWNED, obj=E, api=True),
    "api-experiment-comparison": Entry(OWNED, obj=E, api=True),
    "api-experiment-exports": Entry(OWNED, ("POST",), obj=E, api=True),
    "api-export-detail": Entry(OWNED, obj=X, api=True),
    "api-export-download": Entry(OWNED, obj=X, api=True),
    "api-trial-detail": Entry(OWNED, obj=T, api=True),
    "api-trial-windows": Entry(OWNED, obj=T, api=True),
    "api-trial-cancel": Entry(OWNED, ("POST",), obj=T, api=True),
    "api-prices": Entry(LIST, api=True),
    "api-pins": Entry(LIST, ("GET", "POST", "DELETE"), api=True),
    "api-models": Entry(LIST, ("GET",), api=True),  # POST (an upload) is tests/registry's
    "api-model-detail": Entry(OWNED, ("GET", "DELETE"), obj="model", api=True),
    "model-list": Entry(LIST),
    "api-experiment-profile": Entry(OWNED, ("POST",), obj=E, api=True),
    "api-profile-list": Entry(LIST, api=True),
    "api-profile-detail": Entry(OWNED, obj="profile", api=True),
    "api-experiment-capacity": Entry(OWNED, ("GET", "POST"), obj=E, api=True),
    "api-capacity-detail": Entry(OWNED, obj="capacity", api=True),
    "api-capacity-cancel": Entry(OWNED, ("POST",), obj="capacity", api=True),
    # Django's own account pages
    "login": Entry(PUBLIC, ("GET", "POST")),
    "metrics": Entry(TOKEN),  # Prometheus exposition (test_metrics: refused without the token, parsed with it)
    "logout": Entry(PUBLIC, ("POST",)),
    "password_change": Entry(LOGIN, ("GET",)),
    "password_change_done": Entry(LOGIN),
    "password_reset": Entry(PUBLIC),
    "password_reset_done": Entry(PUBLIC),
    "password_reset_confirm": Entry(PUBLIC, obj="reset"),
    "password_reset_complete": Entry(PUBLIC),
}
# WebSocket routes: the tests in test_consumers.py that check each persona.
WS_MATRIX = {
    "ws-trial": ("test_an_anonymous_visitor_is_rejected", "test_another_users_trial_is_rejected_as_not_found",
                 "test_the_owner_gets_the_stored_windows_then_each_new_window_and_status",
                 "test_logging_out_closes_that_sessions_sockets", "test_deleting_the_user_closes_their_sockets",
                 "test_deleting_the_experiment_closes_the_sockets_on_its_trials"),
}


def url_patterns(resolver=None, prefix: str = ""):
    for p in (resolver or get_resolver()).url_patterns:
        if isinstance(p, URLResolver):
            yield from url_patterns(p, prefix + str(p.pattern))
        else:
            yield prefix + str(p.pattern), p


def app_patterns() -> dict[str, str]:
    """name -> route of every pattern outside the admin (the admin site guards its own: see below)."""
    out = {}
    for route, p in url_patterns():
        if route.startswith("admin/"):
            continue
        assert isinstance(p, URLPattern) and p.name, f"{route} has no name: the matrix cannot list it"
        out.setdefault(p.name, route)
    return out


def test_every_url_pattern_is_in_the_matrix():
    names = set(app_patterns())
    assert names - set(MATRIX) == set(), "URL patterns without a permission entry"
    assert set(MATRIX) - names == set(), "matrix entries for URL patterns that no longer exist"


def test_every_websocket_route_is_in_the_matrix_and_its_tests_exist():
    assert {p.name for p in websocket_urlpatterns} == set(WS_MATRIX)
    for tests in WS_MATRIX.values():
        for name in tests:
            assert callable(getattr(test_consumers, name, None)), name


# ---- the world: the owner's things, and an outsider who has things of their own -----------------------------
@pytest.fixture
def world(user, other_user, price_catalogue, media_root, checked_onnx):
    experiment, by = run(user, [variant("always", min_instances=1), variant("cold")])
    trial = by["always"][0]
    finish(trial, summary(30.0), windows=3, media_root=media_root, artifact_n=50)
    finish(by["cold"][0], summary(40.0, busy_s=10.0))
    export = exports.export_create(owner=user, fmt="csv", experiment=experiment, inline=True)
    link = exports.share_link_create(owner=user, experiment=experiment)
    Pin.objects.create(user=user, trial=trial)
    profile = stored(owner=user)
    search = capacity.capacity_start(experiment=experiment, user=user, enqueue=False,
                                     options={"variant": "always", "simulated": True})
    theirs = services.experiment_import(owner=other_user, data={**_spec(), "name": "outsiders-own"})
    return {"experiment": experiment, "trial": trial, "export": export, "share-link": link, "owner": user,
            "variant": experiment.variants.first(), "outsider": other_user, "theirs": theirs,
            "profile": profile, "model": _uploaded_model(user, media_root, checked_onnx), "capacity": search}


@pytest.fixture(scope="session")
def checked_onnx(tmp_path_factory):
    """A small ONNX model and its signature, checked once for the session by the registry's real (isolated)
    check: about 1.5 s of subprocess that every test of the matrix would otherwise pay in `world`."""
    from tests.registry.onnx_files import classifier
    from workers.onnx_models import inspect_file_isolated

    path = classifier(tmp_path_factory.mktemp("onnx") / "clf.onnx")
    return path, inspect_file_isolated(path)[0]


def _uploaded_model(owner, media_root, checked):
    """An ONNX model of the owner's, stored as model_register stores a checked upload (file under MEDIA_ROOT, the
    signature the check read). The upload path itself is tested in tests/registry."""
    import hashlib
    import shutil

    from controlplane.registry.models import Model

    path, sig = checked
    model = Model(owner=owner, name="owners-model", sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                  size_bytes=path.stat().st_size, inputs=sig.inputs, outputs=sig.outputs, opset=sig.opset,
                  dynamic_batch=sig.dynamic_batch)
    model.file.name = f"models/{model.code}/model.onnx"
    final = media_root / model.file.name
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, final)
    model.save()
    return model


def _spec() -> dict:
    return {"name": "x", "device": "cpu", "functions": [{"name": "f", "model": "mlp-small"}],
            "workload": {"pattern": "poisson", "rate_rps": 5, "duration_s": 2},
            "variants": [{"name": "v", "batching": {"mode": "none"}}]}


def url_for(name: str, entry: Entry, world: dict) -> str:
    obj = entry.obj
    if obj in (E, T, X, "profile", "model", "capacity"):
        return reverse(name, kwargs={"code": world[obj].code})
    if obj == "variant":
        return reverse(name, kwargs={"code": world["experiment"].code, "variant_id": world["variant"].pk})
    if obj == "share-link":
        return reverse(name, kwargs={"pk": world["share-link"].pk})
    if obj == "share-token":
        return reverse(name, kwargs={"token": world["share-link"].token})
    if obj == "price":
        return reverse(name, kwargs={"pk": PriceEntry.objects.first().pk})
    if obj == "reset":
        return reverse(name, kwargs={"uidb64": "MQ", "token": "set-password"})
    return reverse(name)


def call(client: Client, method: str, url: str):
    if method in ("GET", "DELETE"):
        return client.generic(method, url)
    return client.generic(method, url, "{}", content_type="application/json") if url.startswith("/api/") \
        else client.post(url, {})


def as_user(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


NEEDS_LOGIN = sorted(n for n, e in MATRIX.items() if e.access not in (PUBLIC, TOKEN))
OWNED_NAMES = sorted(n for n, e in MATRIX.items() if e.access == OWNED)
LIST_NAMES = sorted(n for n, e in MATRIX.items() if e.access == LIST)


@pytest.mark.parametrize("name", NEEDS_LOGIN)
def test_anonymous_visitors_are_sent_to_log_in(name, world):
    entry = MATRIX[name]
    url = url_for(name, entry, world)
    for method in entry.methods:
        response = call(Client(), method, url)
        if entry.api:
            assert response.status_code == 401, (method, url, response.status_code)
        else:
            assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), \
                (method, url, response.status_code)


@pytest.mark.parametrize("name", OWNED_NAMES)
def test_another_user_gets_404_for_everything_of_the_owners(name, world):
    entry = MATRIX[name]
    url = url_for(name, entry, world)
    outsider = as_user(world["outsider"])
    for method in entry.methods:
        response = call(outsider, method, url)
        assert response.status_code == 404, (method, url, response.status_code)


@pytest.mark.parametrize("name", OWNED_NAMES)
def test_the_owner_gets_in(name, world):
    entry = MATRIX[name]
    url = url_for(name, entry, world)
    for method in entry.methods:
        response = as_user(world["owner"]).generic("GET", url) if method == "GET" else call(
            as_user(world["owner"]), method, url)
        # 400: in, with a body the view refuses ({} is not a spec); never "not yours" or a crash
        assert response.status_code not in (401, 403, 404) and response.status_code < 500, \
            (method, url, response.status_code)


@pytest.mark.parametrize("name", LIST_NAMES)
def test_lists_show_another_user_nothing_of_the_owners(name, world):
    entry = MATRIX[name]
    url = url_for(name, entry, world)
    secrets = [world["experiment"].name, str(world["experiment"].code), str(world["trial"].code),
               str(world["export"].code), world["share-link"].token, str(world["profile"].code),
               str(world["model"].code), "owners-model", str(world["capacity"].code)]
    for method in entry.methods:
        response = call(as_user(world["outsider"]), method, url)
        assert response.status_code < 500, (method, url, response.status_code)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        leaked = [s for s in secrets if s.encode() in body]
        assert not leaked, (method, url, leaked)


def test_the_lists_do_show_the_owner_their_own(world):
    # The leak check above is not empty by construction: the same pages list the owner's things.
    owner = as_user(world["owner"])
    assert world["experiment"].name.encode() in owner.get(reverse("experiment-list")).content
    assert str(world["trial"].code).encode() in owner.get(reverse("api-pins")).content
    assert b"outsiders-own" not in owner.get(reverse("api-experiment-list")).content


@pytest.mark.parametrize("name", sorted(n for n, e in MATRIX.items() if e.access == STAFF))
def test_staff_pages_refuse_users_who_are_not_staff(name, world):
    entry = MATRIX[name]
    url = url_for(name, entry, world)
    for user in (world["owner"], world["outsider"]):
        for method in entry.methods:
            assert call(as_user(user), method, url).status_code == 403


def test_a_share_link_opens_its_report_for_anyone_and_a_made_up_one_nothing(world):
    url = url_for("shared-report", MATRIX["shared-report"], world)
    assert Client().get(url).status_code == 200
    assert as_user(world["outsider"]).get(url).status_code == 200
    assert Client().get(reverse("shared-report", kwargs={"token": uuid.uuid4().hex})).status_code == 404
    ShareLink.objects.filter(pk=world["share-link"].pk).update(revoked_at=world["share-link"].created)
    assert Client().get(url).status_code == 404


@pytest.mark.parametrize("name", sorted(n for n, e in MATRIX.items() if e.access == TOKEN))
def test_token_urls_refuse_everyone_without_the_token(name, world, settings):
    settings.METRICS_TOKEN = "s3cret"
    url = url_for(name, MATRIX[name], world)
    for client in (Client(), as_user(world["owner"]), as_user(world["outsider"])):
        assert client.get(url).status_code == 401
        assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401


def test_the_admin_is_for_staff_only(world):
    from django.contrib import admin

    urls = [reverse("admin:index")] + [
        reverse(f"admin:{m._meta.app_label}_{m._meta.model_name}_changelist") for m in admin.site._registry]
    for client in (Client(), as_user(world["owner"])):
        for url in urls:
            response = client.get(url)
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url


def test_the_matrix_counts(capsys):
    with capsys.disabled():
        print(f"\npermission matrix: {len(MATRIX)} URL patterns ({len(OWNED_NAMES)} owner-only, "
              f"{len(LIST_NAMES)} lists), {len(WS_MATRIX)} WebSocket route(s), "
              f"{sum(len(e.methods) for e in MATRIX.values())} method x URL pairs, 3 personas")
    assert get_user_model().objects.count() == 0  # no world here: counting only
