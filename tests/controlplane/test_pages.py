"""The setup pages through Django's test client: access rules, the editor's round trip, spec files, runs."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from controlplane.experiments import services
from controlplane.experiments.models import Experiment, Trial
from tests.conftest import frozen_run
from workers import spec as S

pytestmark = pytest.mark.django_db

SPEC = {
    "name": "bursty classifier",
    "device": "cpu",
    "slo": {"percentile": 99, "latency_ms": 50, "max_violation_rate": 0.01},
    "functions": [{"name": "classifier", "model": "mlp-small"}],
    "workload": {"pattern": "constant", "rate_rps": 20, "duration_s": 30},
    "variants": [{"name": "dedicated"}, {"name": "batched", "batching": {"mode": "fixed", "max_batch_size": 8,
                                                                        "max_queue_delay_ms": 5}}],
}
TIMESTAMPS_TRACE = "0.0\n0.5\n1.0\n1.5\n2.0\n"


class _FormFields(HTMLParser):
    """The values a browser would submit for the editor form as rendered (no JavaScript)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] = {}
        self._select: str | None = None
        self._first_option: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and "__prefix__" not in name and a.get("type") not in ("file", "submit"):
            if a.get("type") == "checkbox":
                if "checked" in a:
                    self.data[name] = "on"
            else:
                self.data[name] = a.get("value") or ""
        elif tag == "select" and name and "__prefix__" not in name:
            self._select, self._first_option = name, None
        elif tag == "option" and self._select:
            if self._first_option is None:
                self._first_option = a.get("value", "")
                self.data.setdefault(self._select, self._first_option)
            if "selected" in a:
                self.data[self._select] = a.get("value", "")
        elif tag == "textarea" and name and "__prefix__" not in name:
            self._textarea = name
            self.data[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.data[self._textarea] += data.lstrip("\n") if not self.data[self._textarea] else data


def editor_data(client, url: str, **changes: str) -> dict:
    """GET the editor, then what submitting it would post, with `changes` (field name -> value) applied."""
    response = client.get(url)
    assert response.status_code == 200
    parser = _FormFields()
    parser.feed(response.content.decode())
    data = {k: v for k, v in parser.data.items() if k != "csrfmiddlewaretoken"}
    data.update(changes)
    return data


def field_errors(response, form_path: str) -> list[str]:
    """Errors the editor attached to a form field, e.g. "variants.0.max_batch_size" or "workload.rate_rps"."""
    editor = response.context["editor"]
    parts = form_path.split(".")
    form = getattr(editor, parts[0])
    if len(parts) == 3:
        form = form.forms[int(parts[1])]
    return list(form.errors.get(parts[-1], []))


@pytest.fixture
def experiment(user):
    return services.experiment_import(owner=user, data=json.loads(json.dumps(SPEC)))


@pytest.fixture
def owner_client(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def outsider_client(client, other_user):
    client.force_login(other_user)
    return client


# ---- access -----------------------------------------------------------------------------------------
EXPERIMENT_PAGES = ["experiment-detail", "experiment-edit", "experiment-export", "experiment-trials",
                    "experiment-delete"]
EXPERIMENT_ACTIONS = ["experiment-run", "experiment-cancel", "experiment-clone", "experiment-delete", "experiment-edit"]


@pytest.mark.parametrize("name", EXPERIMENT_PAGES)
def test_owner_sees_each_experiment_page(owner_client, experiment, name):
    assert owner_client.get(reverse(name, args=[experiment.code])).status_code == 200


@pytest.mark.parametrize("name", EXPERIMENT_PAGES)
def test_another_user_gets_404_on_each_experiment_page(outsider_client, experiment, name):
    assert outsider_client.get(reverse(name, args=[experiment.code])).status_code == 404


@pytest.mark.parametrize("name", EXPERIMENT_ACTIONS)
def test_another_user_cannot_act_on_an_experiment(outsider_client, experiment, name):
    assert outsider_client.post(reverse(name, args=[experiment.code])).status_code == 404
    assert Experiment.objects.filter(pk=experiment.pk, name=SPEC["name"]).exists()
    assert Experiment.objects.count() == 1 and not Trial.objects.exists()


def test_another_user_cannot_clone_a_variant(outsider_client, experiment):
    variant = experiment.variants.first()
    url = reverse("variant-clone", args=[experiment.code, variant.id])
    assert outsider_client.post(url).status_code == 404
    assert experiment.variants.count() == 2


def test_a_variant_of_another_experiment_is_not_found_under_this_one(owner_client, user, experiment):
    other = services.experiment_import(owner=user, data=dict(SPEC, name="other"))
    url = reverse("variant-clone", args=[experiment.code, other.variants.first().id])
    assert owner_client.post(url).status_code == 404


@pytest.mark.parametrize("url_name", ["experiment-list", "experiment-create", "experiment-import"])
def test_owner_sees_the_pages_without_an_experiment(owner_client, url_name):
    assert owner_client.get(reverse(url_name)).status_code == 200


@pytest.mark.parametrize("name", ["experiment-list", "experiment-create", "experiment-import", *EXPERIMENT_PAGES])
def test_anonymous_visitors_are_sent_to_log_in(client, experiment, name):
    url = reverse(name, args=[experiment.code]) if name in EXPERIMENT_PAGES else reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize("name", ["workload-preview", "experiment-run"])
def test_anonymous_posts_are_sent_to_log_in(client, experiment, name):
    url = reverse(name, args=[experiment.code]) if name != "workload-preview" else reverse(name)
    response = client.post(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not Trial.objects.exists()


def test_the_login_page_renders_and_logs_in(client, user):
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("login"), {"username": "owner", "password": "owner-pass-123"})
    assert response.status_code == 302 and response["Location"] == reverse("experiment-list")


# ---- list -------------------------------------------------------------------------------------------
def test_the_list_shows_only_my_experiments_with_their_latest_result(owner_client, user, other_user, experiment):
    services.experiment_import(owner=other_user, data=dict(SPEC, name="someone else's"))
    data = json.loads(json.dumps(SPEC))
    run = frozen_run(experiment, data)
    for name, p99, met, cost in (("dedicated", 31.5, True, 0.012), ("batched", 44.0, True, 0.007)):
        Trial.objects.create(experiment=experiment, variant_name=name, run_number=1, status="succeeded", **run,
                             summary={"latency_ms": {"p50": 5.0, "p99": p99}, "slo_met": met,
                                      "cost": {"serverless_per_1k_usd": cost, "provisioned_per_1k_usd": cost * 2}})
    html = owner_client.get(reverse("experiment-list")).content.decode()
    assert "bursty classifier" in html and "someone else" not in html
    assert 'class="badge badge-finished"' in html
    # The cheapest variant that met the SLO is the one shown at a glance.
    assert "<strong>batched</strong>" in html and "p99 44.0 / 50 ms" in html and "$0.00700/1k" in html
    assert "cheapest variant that met the SLO" in html


def test_a_new_user_sees_an_empty_state_with_the_way_in(owner_client):
    html = owner_client.get(reverse("experiment-list")).content.decode()
    assert "No experiments yet" in html and reverse("experiment-create") in html


# ---- create / edit ----------------------------------------------------------------------------------
def test_creating_with_valid_fields_stores_exactly_one_experiment_with_its_parts(owner_client, user):
    url = reverse("experiment-create")
    data = editor_data(owner_client, url, **{
        "name": "made in the editor", "device": "cpu", "slo-percentile": "95", "slo-latency_ms": "40",
        "slo-max_violation_pct": "2.5", "functions-0-input_shape": "128", "workload-pattern": "gamma",
        "workload-rate_rps": "30", "workload-cv": "2", "workload-duration_s": "45", "workload-time_compression": "3",
        "variants-0-batching_mode": "adaptive", "variants-0-max_batch_size": "16", "variants-0-shed": "on",
        "variants-0-keep_alive_policy": "histogram", "variants-0-min_instances": "0", "variants-0-max_instances": "4",
    })
    response = owner_client.post(url, data)
    assert response.status_code == 302
    experiment = Experiment.objects.get()
    assert response["Location"] == experiment.get_absolute_url()
    assert (experiment.owner, experiment.name, experiment.device) == (user, "made in the editor", "cpu")
    assert (experiment.slo.percentile, experiment.slo.latency_ms, experiment.slo.max_violation_rate) == (95.0, 40.0, 0.025)
    function = experiment.functions.get()
    assert (function.name, function.model_key, function.input_shape) == ("classifier", "mlp-small", [128])
    workload = experiment.workloads.get()
    assert (workload.pattern, workload.params, workload.duration_s, workload.time_compression) == (
        "gamma", {"rate_rps": 30.0, "cv": 2.0}, 45.0, 3.0)
    variant = experiment.variants.get()
    assert (variant.batching_mode, variant.max_batch_size, variant.shed) == ("adaptive", 16, True)
    assert (variant.keep_alive_policy, variant.keep_alive_params["min_samples"]) == ("histogram", 10)
    assert (variant.min_instances, variant.max_instances) == (0, 4)


def test_fields_of_other_modes_are_ignored_not_saved(owner_client):
    # The page hides them; a leftover value in a hidden field must not leak into the spec.
    url = reverse("experiment-create")
    data = editor_data(owner_client, url, name="hidden leftovers", **{
        "variants-0-batching_mode": "none", "variants-0-max_batch_size": "0", "variants-0-share": "0.5",
        "workload-pattern": "constant", "workload-cv": "-3"})
    assert owner_client.post(url, data).status_code == 302
    variant = Experiment.objects.get().variants.get()
    assert (variant.batching_mode, variant.max_batch_size, variant.share) == ("none", 1, None)


def test_a_post_without_any_variant_rows_says_so_and_saves_nothing(owner_client):
    url = reverse("experiment-create")
    response = owner_client.post(url, editor_data(owner_client, url, name="no variants", **{"variants-TOTAL_FORMS": "0"}))
    assert response.status_code == 400
    assert response.context["editor"].section_errors["variants"] == ["variants: must be a list of 1-32 variants"]
    assert not Experiment.objects.exists()


def test_a_tampered_form_without_its_row_counts_is_refused(owner_client):
    url = reverse("experiment-create")
    data = {k: v for k, v in editor_data(owner_client, url, name="tampered").items() if "TOTAL_FORMS" not in k}
    response = owner_client.post(url, data)
    assert response.status_code == 400 and "reload the page" in response.content.decode()
    assert not Experiment.objects.exists()


def test_rows_added_by_the_page_are_saved_in_order(owner_client):
    url = reverse("experiment-create")
    data = editor_data(owner_client, url, name="three variants", **{
        "variants-TOTAL_FORMS": "3",
        "variants-1-name": "two", "variants-1-sharing": "spatial", "variants-1-share": "0.25",
        "variants-1-min_instances": "1", "variants-1-max_instances": "4", "variants-1-batching_mode": "none",
        "variants-1-keep_alive_policy": "fixed", "variants-1-ttl_s": "5",
        "variants-2-name": "three", "variants-2-sharing": "time_slice", "variants-2-batching_mode": "none",
        "variants-2-keep_alive_policy": "fixed",
        "functions-TOTAL_FORMS": "2", "functions-1-name": "second", "functions-1-model": "null",
        "functions-1-weight": "3"})
    assert owner_client.post(url, data).status_code == 302
    experiment = Experiment.objects.get()
    assert [v.name for v in experiment.variants.all()] == ["baseline", "two", "three"]
    assert experiment.variants.get(name="two").share == 0.25
    assert [(f.name, f.weight) for f in experiment.functions.all()] == [("classifier", 1.0), ("second", 3.0)]


INVALID = [
    ("batch size 0", {"variants-0-batching_mode": "fixed", "variants-0-max_batch_size": "0"},
     "variants.0.max_batch_size", "must be between 1 and 1024"),
    ("min above max", {"variants-0-min_instances": "3", "variants-0-max_instances": "1"},
     "variants.0.min_instances", "must be at most max_instances (1)"),
    ("unknown model", {"functions-0-model": "resnet-9000"}, "functions.0.model", "unknown model 'resnet-9000'"),
    ("rate 0", {"workload-pattern": "poisson", "workload-rate_rps": "0"}, "workload.rate_rps", "must be above 0"),
    ("absurd duration", {"workload-duration_s": "1e9"}, "workload.duration_s", "at most 86400"),
    ("not a number", {"slo-latency_ms": "fast"}, "slo.latency_ms", "Enter a number."),
    ("bad input shape", {"functions-0-input_shape": "3, big"}, "functions.0.input_shape", "whole numbers"),
    ("duplicate variant", {"variants-TOTAL_FORMS": "2", "variants-1-name": "baseline"}, "variants.1.name",
     "another variant is already named 'baseline'"),
    ("spatial share too big", {"variants-0-sharing": "spatial", "variants-0-share": "0.6",
                               "variants-0-max_instances": "2"}, "variants.0.share", "more than the whole device"),
]


@pytest.mark.parametrize(("case", "changes", "field", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_an_invalid_field_re_renders_with_its_error_and_saves_nothing(owner_client, case, changes, field, message):
    url = reverse("experiment-create")
    data = editor_data(owner_client, url, name="invalid " + case, **changes)
    response = owner_client.post(url, data)
    assert response.status_code == 400
    errors = field_errors(response, field)
    assert any(message in e for e in errors), errors
    html = response.content.decode()
    # Next to its field (the error's id is the input's id + "-error") and in the summary at the top.
    input_id = "id_" + "-".join(field.split("."))
    assert f'id="{input_id}-error"' in html
    assert "Nothing was saved" in html and f'href="#{input_id}"' in html
    assert "invalid " + case in html  # what the user typed is kept
    assert not Experiment.objects.exists()


def test_a_bad_trace_file_names_the_line_and_saves_nothing(owner_client):
    url = reverse("experiment-create")
    data = editor_data(owner_client, url, name="bad trace", **{
        "workload-pattern": "trace", "workload-trace_format": "timestamps", "workload-duration_s": "10"})
    data["workload-trace_file"] = SimpleUploadedFile("arrivals.txt", b"0.1\n0.5\nabc\n")
    response = owner_client.post(url, data)
    assert response.status_code == 400
    assert field_errors(response, "workload.trace_file") == ["line 3: 'abc' is not a finite number of seconds"]
    assert not Experiment.objects.exists()


def test_an_uploaded_trace_survives_a_failed_save_and_is_stored_on_the_next(owner_client):
    url = reverse("experiment-create")
    data = editor_data(owner_client, url, name="", **{
        "workload-pattern": "trace", "workload-trace_format": "timestamps", "workload-duration_s": "10"})
    first = owner_client.post(url, dict(data, **{"workload-trace_file": SimpleUploadedFile("arr.txt", TIMESTAMPS_TRACE.encode())}))
    assert first.status_code == 400 and field_errors(first, "basics.name") == ["must not be empty"]
    assert "Using the trace <strong>arr.txt</strong>" in first.content.decode()
    # The browser sends back the hidden copy; no new upload.
    editor = first.context["editor"]
    assert editor.workload["trace_content"].value() == TIMESTAMPS_TRACE
    data.update({"name": "second try", "workload-trace_content": TIMESTAMPS_TRACE, "workload-trace_filename": "arr.txt"})
    assert owner_client.post(url, data).status_code == 302
    workload = Experiment.objects.get().workloads.get()
    assert (workload.trace_filename, workload.trace_format, workload.trace_content()) == (
        "arr.txt", "timestamps", TIMESTAMPS_TRACE)


def test_editing_shows_the_stored_values_and_saves_changes(owner_client, experiment):
    url = reverse("experiment-edit", args=[experiment.code])
    data = editor_data(owner_client, url)
    assert data["name"] == "bursty classifier" and data["variants-1-batching_mode"] == "fixed"
    assert data["variants-1-max_batch_size"] == "8" and data["workload-rate_rps"] == "20"
    data.update({"name": "renamed", "variants-1-max_batch_size": "32"})
    response = owner_client.post(url, data)
    assert response.status_code == 302 and response["Location"] == experiment.get_absolute_url()
    experiment.refresh_from_db()
    assert experiment.name == "renamed"
    assert experiment.variants.get(name="batched").max_batch_size == 32
    assert Experiment.objects.count() == 1


def test_editing_keeps_model_options_given_by_a_spec_file(owner_client, user):
    spec = dict(SPEC, functions=[{"name": "classifier", "model": "mlp-small", "options": {"hidden": 64}}])
    experiment = services.experiment_import(owner=user, data=spec)
    url = reverse("experiment-edit", args=[experiment.code])
    assert owner_client.post(url, editor_data(owner_client, url, name="kept options")).status_code == 302
    assert Experiment.objects.get().functions.get().options == {"hidden": 64}


def test_editing_an_invalid_change_leaves_the_stored_experiment_as_it_was(owner_client, experiment):
    url = reverse("experiment-edit", args=[experiment.code])
    data = editor_data(owner_client, url, name="should not stick", **{"variants-1-max_batch_size": "5000"})
    assert owner_client.post(url, data).status_code == 400
    experiment.refresh_from_db()
    assert experiment.name == "bursty classifier"
    assert experiment.variants.get(name="batched").max_batch_size == 8


def test_editing_keeps_a_stored_trace_when_no_new_file_is_chosen(owner_client, user):
    spec = dict(SPEC, workload={"pattern": "trace", "trace_format": "timestamps", "trace_content": TIMESTAMPS_TRACE,
                                "trace_filename": "day.txt", "duration_s": 10, "cv": 2.5})
    experiment = services.experiment_import(owner=user, data=spec)
    url = reverse("experiment-edit", args=[experiment.code])
    page = owner_client.get(url).content.decode()
    assert "day.txt" in page and "saved with this experiment" in page
    assert TIMESTAMPS_TRACE not in page  # the stored text stays on the server
    assert owner_client.post(url, editor_data(owner_client, url, name="retitled")).status_code == 302
    workload = Experiment.objects.get().workloads.get()
    assert (workload.trace_filename, workload.trace_content(), workload.params) == (
        "day.txt", TIMESTAMPS_TRACE, {"cv": 2.5})


def test_per_function_workloads_are_shown_read_only_and_kept_on_save(owner_client, user):
    spec = dict(SPEC, functions=[{"name": "a", "model": "mlp-small"}, {"name": "b", "model": "null"}])
    spec.pop("workload")
    spec["workloads"] = [{"pattern": "constant", "rate_rps": 5, "duration_s": 20, "function": "a"},
                         {"pattern": "poisson", "rate_rps": 9, "duration_s": 20, "function": "b"}]
    experiment = services.experiment_import(owner=user, data=spec)
    url = reverse("experiment-edit", args=[experiment.code])
    assert "one workload per function" in owner_client.get(url).content.decode()
    assert owner_client.post(url, editor_data(owner_client, url, name="kept")).status_code == 302
    stored = {w.function.name: (w.pattern, w.params) for w in Experiment.objects.get().workloads.all()}
    assert stored == {"a": ("constant", {"rate_rps": 5.0}), "b": ("poisson", {"rate_rps": 9.0})}
    # ... unless the user asks to replace them with one split workload.
    data = editor_data(owner_client, url, **{"workload-replace_workloads": "on", "workload-pattern": "constant",
                                             "workload-rate_rps": "7"})
    assert owner_client.post(url, data).status_code == 302
    workload = Experiment.objects.get().workloads.get()
    assert (workload.function, workload.params) == (None, {"rate_rps": 7.0})


# ---- preview ----------------------------------------------------------------------------------------
def test_the_preview_returns_the_rate_curve_and_expected_requests(owner_client):
    data = editor_data(owner_client, reverse("experiment-create"), **{
        "workload-pattern": "constant", "workload-rate_rps": "20", "workload-duration_s": "30",
        "workload-time_compression": "3"})
    body = owner_client.post(reverse("workload-preview"), data).json()
    assert body["ok"] and body["expected_requests"] == 600 and body["run_s"] == 10.0
    assert len(body["t_s"]) == len(body["rate_rps"]) > 2 and set(body["rate_rps"]) == {20.0}


def test_the_preview_plots_steps_exactly(owner_client):
    data = editor_data(owner_client, reverse("experiment-create"), **{
        "workload-pattern": "steps", "workload-duration_s": "60", "steps-TOTAL_FORMS": "2",
        "steps-0-start_s": "0", "steps-0-rate_rps": "10", "steps-1-start_s": "30", "steps-1-rate_rps": "50"})
    body = owner_client.post(reverse("workload-preview"), data).json()
    assert body["expected_requests"] == 10 * 30 + 50 * 30 and body["peak_rate_rps"] == 50


def test_the_preview_returns_field_errors_instead_of_a_curve(owner_client):
    data = editor_data(owner_client, reverse("experiment-create"), **{
        "workload-pattern": "poisson", "workload-rate_rps": "0", "workload-duration_s": "abc"})
    response = owner_client.post(reverse("workload-preview"), data)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors["duration_s"] == ["Enter a number."]
    assert any("must be above 0" in m for m in errors["rate_rps"])


def test_the_preview_of_a_saved_trace_uses_the_stored_file(owner_client, user, other_user):
    spec = dict(SPEC, workload={"pattern": "trace", "trace_format": "timestamps", "trace_content": TIMESTAMPS_TRACE,
                                "duration_s": 10})
    experiment = services.experiment_import(owner=user, data=spec)
    data = editor_data(owner_client, reverse("experiment-edit", args=[experiment.code]), code=str(experiment.code))
    body = owner_client.post(reverse("workload-preview"), data).json()
    assert body["ok"] and body["expected_requests"] == 5
    owner_client.force_login(other_user)
    assert owner_client.post(reverse("workload-preview"), data).status_code == 404


# ---- detail, run, cancel, clone, delete -------------------------------------------------------------
def test_the_detail_page_summarises_the_setup(owner_client, experiment):
    html = owner_client.get(experiment.get_absolute_url()).content.decode()
    for text in ("p99 ≤ 50 ms", "classifier", "mlp-small", "constant", "rate_rps = 20.0", "dedicated", "batched",
                 "fixed <span", "No runs yet", reverse("experiment-export", args=[experiment.code])):
        assert text in html, text


def test_run_queues_one_trial_per_variant_and_repeat_once_committed(owner_client, experiment,
                                                                    django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = owner_client.post(reverse("experiment-run", args=[experiment.code]), {"repeats": "2"})
    assert response.status_code == 302 and response["Location"] == experiment.get_absolute_url()
    trials = list(Trial.objects.filter(experiment=experiment).order_by("variant_name", "repeat"))
    assert [(t.variant_name, t.repeat, t.status) for t in trials] == [
        ("batched", 0, "queued"), ("batched", 1, "queued"), ("dedicated", 0, "queued"), ("dedicated", 1, "queued")]
    # One callback sends every trial of the run, after the commit.
    assert sorted(i for cb in callbacks for i in cb.keywords["trial_ids"]) == sorted(t.id for t in trials)
    html = owner_client.get(experiment.get_absolute_url()).content.decode()
    assert "Run 1" in html and 'data-active="1"' in html and "Cancel active trials" in html
    assert reverse("trial-detail", args=[trials[0].code]) in html


def test_simulate_queues_simulated_trials_on_the_sim_queue_and_they_are_badged(owner_client, experiment,
                                                                             django_capture_on_commit_callbacks):
    html = owner_client.get(experiment.get_absolute_url()).content.decode()
    assert 'id="simulate-experiment"' in html
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = owner_client.post(reverse("experiment-run", args=[experiment.code]),
                                     {"simulate": "1", "devices": "3", "placement": "load_pack"}, follow=True)
    assert "simulated trials" in response.content.decode()
    trials = list(Trial.objects.filter(experiment=experiment))
    assert trials and all(t.queue == "sim" and t.simulation == {"devices": 3, "placement": "load_pack",
                                                                 "profiles": {}} for t in trials)
    assert len([i for cb in callbacks for i in cb.keywords["trial_ids"]]) == len(trials)
    html = owner_client.get(experiment.get_absolute_url()).content.decode()
    assert "badge-simulated" in html and "unvalidated" in html
    response = owner_client.post(reverse("experiment-run", args=[experiment.code]),
                                 {"simulate": "1", "devices": "0"}, follow=True)
    assert "simulate.devices: must be a whole number between 1 and 256" in response.content.decode()


def test_run_refuses_a_bad_repeat_count_and_queues_nothing(owner_client, experiment):
    response = owner_client.post(reverse("experiment-run", args=[experiment.code]), {"repeats": "50"}, follow=True)
    assert "repeats: must be a whole number between 1 and 20" in response.content.decode()
    assert not Trial.objects.exists()


def test_cancel_stops_the_queued_trials(owner_client, experiment, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        owner_client.post(reverse("experiment-run", args=[experiment.code]))
    response = owner_client.post(reverse("experiment-cancel", args=[experiment.code]))
    assert response.status_code == 302
    assert set(Trial.objects.values_list("status", flat=True)) == {"cancelled"}
    fragment = owner_client.get(reverse("experiment-trials", args=[experiment.code])).content.decode()
    assert 'data-active="0"' in fragment and "badge-cancelled" in fragment


def test_a_failed_trial_shows_its_error_and_figures_show_for_a_finished_one(owner_client, experiment):
    data = json.loads(json.dumps(SPEC))
    run = frozen_run(experiment, data)
    Trial.objects.create(experiment=experiment, variant_name="dedicated", run_number=1, status="failed", **run,
                         error="spatial sharing needs MPS: nvidia-cuda-mps-control not found")
    Trial.objects.create(experiment=experiment, variant_name="batched", run_number=1, status="succeeded", **run,
                         summary={"latency_ms": {"p50": 4.24, "p99": 61.0}, "slo_met": False,
                                  "cost": {"serverless_per_1k_usd": 0.0123}})
    html = owner_client.get(reverse("experiment-trials", args=[experiment.code])).content.decode()
    assert "nvidia-cuda-mps-control not found" in html
    assert "4.2 ms" in html and "61.0 ms" in html and "✗ missed" in html and "$0.0123" in html


def test_clone_makes_a_copy_without_trials(owner_client, user, experiment, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        owner_client.post(reverse("experiment-run", args=[experiment.code]))
    response = owner_client.post(reverse("experiment-clone", args=[experiment.code]))
    clone = Experiment.objects.exclude(pk=experiment.pk).get()
    assert response["Location"] == clone.get_absolute_url()
    assert (clone.owner, clone.name, clone.variants.count(), clone.trials.count()) == (
        user, "bursty classifier (copy)", 2, 0)


def test_variant_clone_adds_a_copy_next_to_the_original(owner_client, experiment):
    variant = experiment.variants.get(name="batched")
    response = owner_client.post(reverse("variant-clone", args=[experiment.code, variant.id]))
    assert response.status_code == 302
    copy = experiment.variants.get(name="batched-copy")
    assert (copy.batching_mode, copy.max_batch_size) == ("fixed", 8)


def test_delete_asks_first_then_removes_everything(owner_client, experiment):
    page = owner_client.get(reverse("experiment-delete", args=[experiment.code]))
    assert "cannot be undone" in page.content.decode() and Experiment.objects.exists()
    response = owner_client.post(reverse("experiment-delete", args=[experiment.code]))
    assert response["Location"] == reverse("experiment-list")
    assert not Experiment.objects.exists()


# ---- import / export --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_export_gives_a_spec_that_the_validator_accepts(owner_client, experiment, fmt):
    url = reverse("experiment-export", args=[experiment.code]) + ("?format=yaml" if fmt == "yaml" else "")
    response = owner_client.get(url)
    assert response["Content-Disposition"] == f'attachment; filename="bursty-classifier.{fmt}"'
    data = yaml.safe_load(response.content) if fmt == "yaml" else json.loads(response.content)
    spec = S.parse_experiment(data)
    assert [v.name for v in spec.variants] == ["dedicated", "batched"]
    assert spec.workloads[0].params == {"rate_rps": 20.0}


def test_importing_an_exported_file_gives_the_same_experiment(owner_client, experiment):
    exported = owner_client.get(reverse("experiment-export", args=[experiment.code])).content
    response = owner_client.post(reverse("experiment-import"),
                                 {"spec_file": SimpleUploadedFile("spec.json", exported)})
    imported = Experiment.objects.exclude(pk=experiment.pk).get()
    assert response["Location"] == imported.get_absolute_url()
    from controlplane.experiments import spec_io

    assert spec_io.experiment_to_dict(imported) == spec_io.experiment_to_dict(experiment)


def test_import_accepts_pasted_yaml(owner_client, user):
    response = owner_client.post(reverse("experiment-import"), {"spec_text": yaml.safe_dump(SPEC)})
    assert response.status_code == 302
    assert Experiment.objects.get().owner == user


def test_import_lists_every_error_with_its_path_and_saves_nothing(owner_client):
    bad = json.loads(json.dumps(SPEC))
    bad["variants"][1]["batching"]["max_batch_size"] = 0
    bad["functions"][0]["model"] = "nope"
    response = owner_client.post(reverse("experiment-import"),
                                 {"spec_file": SimpleUploadedFile("bad.json", json.dumps(bad).encode())})
    assert response.status_code == 400
    html = response.content.decode()
    assert "<code>variants[1].batching.max_batch_size</code>: must be between 1 and 1024" in html
    assert "<code>functions[0].model</code>: unknown model" in html
    assert not Experiment.objects.exists()


def test_import_reports_a_json_syntax_error_with_its_line(owner_client):
    response = owner_client.post(reverse("experiment-import"),
                                 {"spec_file": SimpleUploadedFile("x.json", b'{\n  "name": "x",\n  oops\n}')})
    assert response.status_code == 400
    assert "not valid JSON" in response.content.decode() and "line 3" in response.content.decode()
    assert not Experiment.objects.exists()


def test_import_with_nothing_chosen_says_so(owner_client):
    response = owner_client.post(reverse("experiment-import"), {})
    assert response.status_code == 400 and "choose a spec file" in response.content.decode()


def test_trial_pages_show_the_three_way_verdict_and_percentiles_beyond_the_drain(owner_client, experiment):
    data = json.loads(json.dumps(SPEC))
    shed = Trial.objects.create(
        experiment=experiment, variant_name="dedicated", run_number=1, status="succeeded", **frozen_run(experiment, data),
        summary={"requests": 2000, "completed": 1958, "latency_ms": {
                     "p50": 4.0, "p90": 9.0, "p95": 12.0, "p99": None, "p999": None, "max": None, "mean": None,
                     "unfinished": 42, "unfinished_share": 0.021},
                 "latency_completed_ms": {"p50": 3.9, "p99": 30.0},
                 "slo_percentile_ci_ms": [None, None],
                 "slo_percentile_ci": {"method": "moving-block bootstrap", "block_s": 3, "resamples": 2000,
                                       "confidence": 0.95},
                 "slo_verdict": {"verdict": "not_met", "reasons": ["p99 latency beyond the run is above the 50 ms "
                                                                   "target"]},
                 "slo_met": False, "drain_s": 2.5, "completed_in_drain": 17, "cost": {}})
    unsure = Trial.objects.create(
        experiment=experiment, variant_name="batched", run_number=1, status="succeeded", **frozen_run(experiment, data),
        summary={"latency_ms": {"p50": 5.0, "p99": 48.0, "unfinished": 0}, "slo_percentile_ci_ms": [44.0, 53.0],
                 "slo_verdict": {"verdict": "inconclusive", "reasons": ["p99 latency 48.0 ms: its 95 % interval "
                                                                        "44.0 ms – 53.0 ms straddles the 50 ms "
                                                                        "target"]},
                 "slo_met": False, "cost": {}})
    html = owner_client.get(reverse("experiment-trials", args=[experiment.code])).content.decode()
    assert "&gt; drain (42 unfinished)" in html and "✗ missed" in html and "beyond the run is above" in html
    assert "? inconclusive" in html and "straddles the 50 ms target" in html and "48.0 ms" in html
    page = owner_client.get(reverse("trial-detail", args=[shed.code])).content.decode()
    assert 'data-verdict="not_met"' in page and "SLO missed" in page
    assert "&gt; drain (42 unfinished)" in page and "&gt; drain – &gt; drain" in page
    assert "2.5 s, 17 completed in it" in page and "3.90 / 30.00" in page
    page = owner_client.get(reverse("trial-detail", args=[unsure.code])).content.decode()
    assert 'data-verdict="inconclusive"' in page and "SLO inconclusive" in page and "straddles" in page
    assert "44.00 – 53.00" in page


# ---- no frozen spec in lists and polls ---------------------------------------------------------------------------
def test_lists_and_polls_load_no_frozen_spec_and_pages_read_only_parts_of_it(owner_client, experiment, user,
                                                                            settings, test_redis):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.METRICS_TOKEN = "metrics-test-token"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": test_redis.prefix}
    services.experiment_run(experiment=experiment, user=user, enqueue=False)
    trials = services.experiment_run(experiment=experiment, user=user, enqueue=False)
    Trial.objects.filter(pk=trials[0].pk).update(status="succeeded", summary={"latency_ms": {"p50": 4.0, "p99": 20.0}})
    code, trial = experiment.code, trials[0].code
    lists_and_polls = [
        reverse("experiment-list"), reverse("experiment-detail", args=[code]), reverse("experiment-trials", args=[code]),
        reverse("experiment-sweep", args=[code]) + "?partial=1", reverse("api-experiment-list"),
        reverse("api-experiment-trials", args=[code]), reverse("api-experiment-results", args=[code]),
        reverse("api-trial-detail", args=[trial]), reverse("api-trial-windows", args=[trial]), reverse("api-pins"),
    ]
    with CaptureQueriesContext(connection) as read:
        for url in lists_and_polls:
            assert owner_client.get(url).status_code == 200, url
        assert owner_client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-test-token").status_code == 200
    sql = [q["sql"] for q in read.captured_queries]
    assert any('"experiments_trial"' in q for q in sql)  # the trials were read...
    assert not [q for q in sql if "experiments_runspec" in q]  # ...and no frozen spec with them
    # The trial page and the comparison read parts of it (slo, variants...), extracted by the database: the whole
    # column, trace and all, is never selected.
    with CaptureQueriesContext(connection) as read:
        assert owner_client.get(reverse("trial-detail", args=[trial])).status_code == 200
        assert owner_client.get(reverse("experiment-compare-data", args=[code])).status_code == 200
    column = '"experiments_runspec"."spec"'
    uses = [q for q in (q["sql"] for q in read.captured_queries) if column in q]
    assert uses
    for q in uses:
        # SQLite: JSON_EXTRACT / JSON_TYPE("experiments_runspec"."spec", ...); PostgreSQL: ("...spec" -> ...)
        for extraction in (f"JSON_EXTRACT({column}", f"JSON_TYPE({column}", f"{column} ->"):
            q = q.replace(extraction, "")
        assert column not in q, q
