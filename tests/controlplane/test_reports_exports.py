"""Exports of a comparison: CSV, JSON, zip and slides, the export service, its Celery task, the page's
Export menu and the API.

One test runs a real experiment inline (the engine measures two variants for 1.5 s each) and checks every
format against the comparison selector and the database; the others use stored trials with known figures
(the fixtures of test_comparison) for a failed trial, a run where no variant met the SLO and an inconclusive
variant, each of which must give an honest report.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.urls import reverse
from pptx import Presentation

from controlplane.experiments import comparison as C
from controlplane.experiments import services, spec_io
from controlplane.experiments.comparison_views import _table
from controlplane.experiments.figures import format_usd
from controlplane.experiments.models import Experiment, Export, Trial
from controlplane.experiments.reports import exports, slides, tabular
from workers.records import COLD_START_PHASES, ROW_COLUMNS

from .test_comparison import finish, run, summary, variant

try:  # the chart module (matplotlib) lands separately; until then the deck has no chart slide
    from controlplane.experiments.reports import charts as _charts  # noqa: F401

    HAVE_CHARTS = True
except ImportError:
    HAVE_CHARTS = False


# ---- checks shared by every experiment --------------------------------------------------------------------------
def check_csv(data: dict, content: bytes) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(content.decode("utf-8"))))
    trials = [(r, rep) for r in data["rows"] for rep in r["repeats"]]
    assert len(rows) == len(trials)
    scale = data["display"]["cost_scale"]
    heads = {m["key"]: tabular.metric_header(m, scale) for m in data["metrics"]}
    assert heads["p99_ms"] == "p99 (ms)" and heads["violation_rate"] == "violation rate (%)"
    assert heads["serverless_per_1k_usd"] == f"serverless cost per 1,000 requests (USD {scale['label']})"
    for line, (row, rep) in zip(rows, trials, strict=True):
        assert line["trial"] == rep["trial"] and line["variant"] == row["variant"] and line["status"] == rep["status"]
        for m in data["metrics"]:
            value = (rep["figures"] or {}).get(m["key"])
            cell = line[heads[m["key"]]]
            if value is None:
                assert cell in ("", "beyond the run") or cell.startswith("> drain"), (m["key"], cell)
                continue
            factor = {"fraction": 100.0}.get(m["unit"], 1.0)
            if m["key"] in ("serverless_per_1k_usd", "provisioned_per_1k_usd", "serverless_per_1k_good_usd",
                            "provisioned_per_1k_good_usd"):
                factor = scale["factor"]
            # the page's rounding: 3 significant figures (whole ms / whole dollars above 100)
            assert float(cell) == pytest.approx(value * factor, rel=5e-3, abs=0.51), (m["key"], cell, value)
    return rows


def check_pptx(data: dict, content: bytes) -> Presentation:
    prs = Presentation(io.BytesIO(content))
    assert prs.slide_width * 9 == prs.slide_height * 16  # 16:9
    assert slides.shapes_inside(prs) == []
    assert slides.smallest_font_pt(prs) >= 12
    # every text box is tall enough for its text by the deck's own (generous) measure
    for slide in prs.slides:
        for shape in slide.shapes:
            if shape.has_text_frame and shape.text_frame.text:
                pt = max(r.font.size.pt for p in shape.text_frame.paragraphs for r in p.runs)
                need = slides.height_of([p.text for p in shape.text_frame.paragraphs], shape.width, pt)
                assert need <= shape.height + 12700 * 12, shape.text_frame.text[:60]
    tables = [s.table for slide in prs.slides for s in slide.shapes if s.has_table]
    page = _table(data, set())
    header, expected, _ = slides.table_rows(data, page)
    got = [[c.text for c in row.cells] for t in tables for i, row in enumerate(t.rows) if i]
    assert got == expected
    # the cells are the stored figures as the page writes them
    slo_metric = data["slo"]["metric"]
    scale = data["display"]["cost_scale"]
    for cells, row in zip(got, data["rows"], strict=True):
        fig = row["figures"][slo_metric]
        if fig["value"] is not None:
            assert cells[2] == C.format_ms(fig["value"])
        cost = row["figures"]["serverless_per_1k_usd"]["value"]
        if cost is not None:
            assert cells[5] == format_usd(cost * scale["factor"])
    text = "\n".join(s.text_frame.text for slide in prs.slides for s in slide.shapes if s.has_text_frame)
    assert data["recommendation"]["text"] in text
    assert "Method" in text and "Caveats" in text
    return prs


def slide_count(prs) -> int:
    return len(prs.slides)


# ---- a real run -------------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_every_format_from_a_real_run_matches_the_selector_and_the_database(user, price_catalogue, test_redis,
                                                                            media_root, tmp_path):
    spec_path = tmp_path / "short.json"
    spec_path.write_text(json.dumps({
        "name": "report-poc", "device": "cpu", "accelerator": "cpu", "slo": {"percentile": 99, "latency_ms": 50},
        "functions": [{"name": "classify", "model": "mlp-small"}],
        "workload": {"pattern": "poisson", "rate_rps": 30, "duration_s": 1.5, "seed": 7},
        "variants": [{"name": "dedicated", "min_instances": 1},
                     {"name": "batched", "batching": {"mode": "fixed", "max_batch_size": 8, "max_queue_delay_ms": 4}}],
    }))
    call_command("run_experiment", str(spec_path), "--inline", "--owner", user.username, stdout=io.StringIO(),
                 stderr=io.StringIO())
    experiment = Experiment.objects.get(owner=user, name="report-poc")
    trials = list(Trial.objects.filter(experiment=experiment))
    assert [t.status for t in trials] == ["succeeded", "succeeded"] and all(t.artifact for t in trials)
    data = C.experiment_comparison(experiment=experiment)

    # CSV: one row per trial, figures equal to the selector's, which equal the database's summaries
    rows = check_csv(data, tabular.render_csv(data))
    for line in rows:
        t = next(t for t in trials if str(t.code) == line["trial"])
        assert float(line["requests (count)"]) == t.summary["requests"]

    # JSON: every figure, plus the spec that re-imports to the same experiment, which can be run again
    doc = json.loads(tabular.render_json(data))
    assert doc["comparison"] == json.loads(json.dumps(data))
    assert doc["spec"] == trials[0].spec
    again = services.experiment_import(owner=user, data={**doc["spec"], "name": "report-poc again"})
    assert spec_io.experiment_to_dict(again) == {**doc["spec"], "name": "report-poc again"}
    rerun = services.experiment_run(experiment=again, user=user, enqueue=False)
    assert sorted(t.variant_name for t in rerun) == ["batched", "dedicated"]

    # zip: everything, with the raw Parquet files that open with pyarrow, and a README of every column
    archive = zipfile.ZipFile(io.BytesIO(tabular.render_zip(data)))
    names = archive.namelist()
    assert {"comparison.csv", "comparison.json", "README.txt"} <= set(names)
    if "pptx" in exports.available_formats():
        assert "slides.pptx" in names
    raw = [n for n in names if n.endswith(".parquet")]
    assert len(raw) == len(trials)
    readme = archive.read("README.txt").decode()
    for name in raw:
        table = pq.read_table(io.BytesIO(archive.read(name)))
        assert table.num_rows > 0
        for column in table.column_names:
            assert f"\n{column}: " in readme, column
    assert archive.read("comparison.csv") == tabular.render_csv(data)

    # slides
    prs = check_pptx(data, slides.render_pptx(data))
    assert slide_count(prs) == (5 if HAVE_CHARTS else 4)

    # the export service stores them with generated names, the owner downloads them
    for fmt in ("csv", "json", "zip", "pptx"):
        export = exports.export_create(owner=user, experiment=experiment, fmt=fmt, inline=True)
        assert export.status == "succeeded", export.error
        path = Path(media_root) / export.file.name
        assert path.parent == Path(media_root) / "exports" and path.stem != experiment.name
        assert export.filename == f"report-poc-run1.{fmt}" and export.size_bytes == path.stat().st_size


def test_the_readme_explains_every_column_the_recorder_writes():
    data = {"scope": {"kind": "run", "experiment": {"code": "x", "name": "e"}, "run": 1},
            "pricing": {"note": "n"}}
    readme = tabular.readme_text(data, [], [])
    for column in (*ROW_COLUMNS, "latency_ms", "function_name", "outcome_name",
                   *(f"cold_start_{p}_ms" for p in COLD_START_PHASES)):
        assert f"\n{column}: " in readme


# ---- honest reports from stored trials --------------------------------------------------------------------------
def _all_formats(data: dict) -> dict:
    return {"csv": tabular.render_csv(data), "json": tabular.render_json(data), "zip": tabular.render_zip(data),
            "pptx": slides.render_pptx(data)}


@pytest.mark.django_db
def test_a_failed_trial_is_reported_as_failed_and_left_out(user, price_catalogue, media_root):
    experiment, by = run(user, [variant("always", min_instances=1), variant("cold", repeats=2)])
    finish(by["always"][0], summary(30.0))
    finish(by["cold"][0], summary(40.0))
    Trial.objects.filter(pk=by["cold"][1].pk).update(status="failed", error="the model raised")
    data = C.experiment_comparison(experiment=experiment)
    out = _all_formats(data)
    rows = check_csv(data, out["csv"])
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["included in figures"] == "no" and failed[0]["p99 (ms)"] == ""
    prs = check_pptx(data, out["pptx"])
    text = "\n".join(s.text_frame.text for slide in prs.slides for s in slide.shapes if s.has_text_frame)
    assert "not counted: repeat 1 (failed)" in text
    readme = zipfile.ZipFile(io.BytesIO(out["zip"])).read("README.txt").decode()
    assert "repeat 1 (failed): none stored" in readme


@pytest.mark.django_db
def test_no_variant_met_says_so_and_names_the_closest(user, price_catalogue):
    experiment, by = run(user, [variant("a"), variant("b")])
    finish(by["a"][0], summary(70.0, ci=[68.0, 72.0], verdict="not_met", reasons=["p99 70.0 ms is above 50.0 ms"]))
    finish(by["b"][0], summary(90.0, ci=[88.0, 92.0], verdict="not_met", reasons=["p99 90.0 ms is above 50.0 ms"]))
    data = C.experiment_comparison(experiment=experiment)
    out = _all_formats(data)
    check_csv(data, out["csv"])
    prs = check_pptx(data, out["pptx"])
    answer = "\n".join(s.text_frame.text for s in prs.slides[1].shapes if s.has_text_frame)
    assert "No variant meets the SLO" in answer and "0 met, 2 not met" in answer
    assert json.loads(out["json"])["comparison"]["recommendation"]["case"] == "none_met"


@pytest.mark.django_db
def test_an_inconclusive_variant_is_a_caveat(user, price_catalogue):
    experiment, by = run(user, [variant("a", repeats=3), variant("b")])
    finish(by["a"][0], summary(45.0))
    finish(by["a"][1], summary(48.0))
    finish(by["a"][2], summary(55.0, ci=[53.0, 57.0], verdict="not_met", reasons=["p99 55.0 ms is above"]))
    finish(by["b"][0], summary(30.0))
    data = C.experiment_comparison(experiment=experiment)
    prs = check_pptx(data, slides.render_pptx(data))
    text = "\n".join(s.text_frame.text for slide in prs.slides for s in slide.shapes if s.has_text_frame)
    assert "a: inconclusive — the repeats disagree: met in 2, not met in 1 of 3" in text
    assert "1 met, 0 not met, 1 inconclusive" in text


@pytest.mark.django_db
def test_many_variants_and_long_caveats_continue_on_more_slides_without_overflow(user, price_catalogue):
    experiment, by = run(user, [variant(f"variant-with-a-long-name-{i}") for i in range(14)])
    for i, ts in enumerate(by.values()):
        finish(ts[0], summary(None if i % 3 == 0 else 30.0 + i, unfinished=40 if i % 3 == 0 else 0,
                              verdict="not_met" if i % 3 == 0 else "met", ci=[45.0, None] if i % 3 == 0 else None,
                              reasons=["p99 beyond the run: requests were still unfinished after the drain"]
                              if i % 3 == 0 else None, behind=True))
    data = C.experiment_comparison(experiment=experiment)
    prs = check_pptx(data, slides.render_pptx(data))
    titles = [slide.shapes[0].text_frame.text for slide in prs.slides]
    assert "Comparison (continued)" in titles and "Method and caveats (continued)" in titles


# ---- the service, the task, the page and the API ---------------------------------------------------------------
@pytest.fixture
def finished_run(user, price_catalogue):
    experiment, by = run(user, [variant("always", min_instances=1), variant("cold")])
    finish(by["always"][0], summary(30.0))
    finish(by["cold"][0], summary(40.0, busy_s=10.0))
    return experiment


@pytest.mark.django_db
def test_big_formats_go_to_the_reports_queue_and_the_task_makes_them(finished_run, user, media_root, monkeypatch,
                                                                     django_capture_on_commit_callbacks):
    from django.conf import settings

    from controlplane.experiments.reports import tasks

    sent = []
    monkeypatch.setattr(tasks.export_report, "apply_async", lambda **kw: sent.append(kw))
    with django_capture_on_commit_callbacks(execute=True):
        export = exports.export_create(owner=user, experiment=finished_run, fmt="pptx")
    assert export.status == "queued" and sent == [{"args": [export.pk], "queue": "reports"}]
    assert tasks.export_report.name == "reports.export"
    assert settings.CELERY_TASK_ROUTES["reports.export"]["queue"] == "reports"
    assert tasks.export_report.run(export.pk) == "succeeded"
    export.refresh_from_db()
    assert export.progress == 1.0 and export.stage == "ready"
    prs = Presentation(str(Path(media_root) / export.file.name))
    assert len(prs.slides) >= 4
    assert tasks.export_report.run(export.pk) == "succeeded"  # a redelivered message does nothing


@pytest.mark.django_db
def test_an_unreachable_broker_fails_the_export_instead_of_leaving_it_queued(finished_run, user, monkeypatch,
                                                                           django_capture_on_commit_callbacks):
    from controlplane.experiments.reports import tasks

    def down(**kw):
        raise ConnectionError("no broker")

    monkeypatch.setattr(tasks.export_report, "apply_async", down)
    with django_capture_on_commit_callbacks(execute=True):
        export = exports.export_create(owner=user, experiment=finished_run, fmt="zip")
    export.refresh_from_db()
    assert export.status == "failed" and "no broker" in export.error


@pytest.mark.django_db
def test_the_page_exports_with_progress_and_only_the_owner_downloads(client, finished_run, user, other_user,
                                                                     media_root):
    client.force_login(user)
    page = client.get(reverse("experiment-compare", kwargs={"code": finished_run.code})).content.decode()
    assert 'id="export-form"' in page and "js/exports.js" in page and 'value="pptx"' in page
    url = reverse("experiment-exports", kwargs={"code": finished_run.code})
    r = client.post(url, {"format": "csv", "run": "1", "baseline": "", "price": ""}, HTTP_ACCEPT="application/json")
    assert r.status_code == 201
    status = r.json()
    assert status["status"] == "succeeded" and status["progress"] == 1.0
    assert client.get(status["status_url"]).json()["download_url"] == status["download_url"]
    download = client.get(status["download_url"])
    assert download.status_code == 200 and b"".join(download.streaming_content).startswith(b"experiment,")
    assert 'filename="compare-poc-run1.csv"' in download["Content-Disposition"]
    # without script: a redirect to the export's own page, which links the download
    r = client.post(url, {"format": "json"})
    assert r.status_code == 302
    assert "Download compare-poc-run1.json" in client.get(r.url).content.decode()
    # a bad format is refused with its field
    r = client.post(url, {"format": "docx"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "format"
    # anyone else: 404 everywhere, files included
    client.force_login(other_user)
    for name in ("export-detail", "export-status", "export-download"):
        assert client.get(reverse(name, kwargs={"code": status["code"]})).status_code == 404
    assert client.post(url, {"format": "csv"}).status_code == 404
    client.logout()
    assert client.get(status["download_url"]).status_code == 302  # to the login page


@pytest.mark.django_db
def test_the_api_starts_an_export_and_reports_its_status_and_download(client, finished_run, user, other_user,
                                                                      media_root):
    client.force_login(user)
    url = f"/api/experiments/{finished_run.code}/exports/"
    r = client.post(url, {"format": "json", "run": 1}, content_type="application/json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "succeeded" and body["url"] == f"/api/exports/{body['code']}/"
    assert client.get(body["url"]).json()["download_url"] == body["download_url"]
    doc = json.loads(b"".join(client.get(body["download_url"]).streaming_content))
    assert doc["comparison"] == json.loads(json.dumps(C.experiment_comparison(experiment=finished_run, run=1)))
    r = client.post(url, {"format": "docx"}, content_type="application/json")
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "format"
    r = client.post(url, {"format": "csv", "run": 9}, content_type="application/json")
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "run"
    client.force_login(other_user)
    assert client.get(body["url"]).status_code == 404
    assert client.get(body["download_url"]).status_code == 404
    assert client.post(url, {"format": "csv"}, content_type="application/json").status_code == 404
    assert Export.objects.filter(owner=other_user).count() == 0


# The engine's monitor thread writes windows from its own connection: rows must be committed to be seen.
@pytest.mark.django_db(transaction=True)
def test_bench_report_prints_the_time_per_format_and_cleans_up(price_catalogue, media_root):
    out = io.StringIO()
    # --short: the 10 s goal is printed, not enforced (a timing goal is the benchmark's to judge, on a quiet machine).
    call_command("bench_report", "--variants", "3", "--load-duration", "1", "--short", stdout=out)
    text = out.getvalue()
    print(text)
    assert "3 variants, 3 trials" in text
    for fmt in exports.available_formats():
        assert f"\n{fmt:<7}" in text, text
    assert not Experiment.objects.filter(name__startswith="bench-report-").exists()


# ---- through a real Celery worker on the reports queue ----------------------------------------------------------
@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_the_reports_worker_of_manage_py_worker_makes_a_queued_export(user, price_catalogue, tmp_path, settings):
    import uuid

    from controlplane.celery import app
    from controlplane.experiments.management.commands.worker import reports_worker_argv
    from controlplane.experiments.reports.tasks import export_report
    from tests import processes
    from tests.conftest import TEST_REDIS_URL

    prefix = f"slsbench-reports-{uuid.uuid4().hex[:8]}"
    settings.MEDIA_ROOT = tmp_path / "media"
    experiment, by = run(user, [variant("always", min_instances=1), variant("cold")])
    finish(by["always"][0], summary(30.0))
    finish(by["cold"][0], summary(40.0, busy_s=10.0))
    export = exports.export_create(owner=user, experiment=experiment, fmt="pptx", inline=False)
    assert export.status == "queued"

    env = processes.subprocess_env(redis_url=TEST_REDIS_URL, channels_prefix=prefix, media_root=settings.MEDIA_ROOT)
    argv = reports_worker_argv(prefix) + ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    assert argv[argv.index("-Q") + 1] == "reports"
    proc = processes.start(argv, env, tmp_path / "reports-worker.log")
    try:
        processes.wait_for(lambda: " ready." in processes.log_text(proc), 90, "the reports worker", proc)
        assert "reports.export" in processes.log_text(proc)  # the task is registered there
        with app.connection_for_write(TEST_REDIS_URL, transport_options={"global_keyprefix": f"{prefix}:"}) as conn:
            export_report.apply_async(args=[export.pk], queue="reports", connection=conn)

        def done():
            export.refresh_from_db()
            return export.is_finished

        processes.wait_for(done, 60, "the export", proc)
    finally:
        processes.stop(proc)
        import redis

        client = redis.Redis.from_url(TEST_REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    assert export.status == "succeeded", export.error
    assert Presentation(str(settings.MEDIA_ROOT / export.file.name)).slides


def test_bench_report_is_also_a_choice_of_the_bench_command():
    from controlplane.experiments.management.commands.bench import Command

    assert Command().create_parser("manage.py", "bench").parse_args(["report", "--json"]).name == "report"


@pytest.mark.django_db
def test_pinned_trials_export_from_the_basket_page(client, user, other_user, price_catalogue, media_root):
    from controlplane.experiments import services as svc

    experiment, by = run(user, [variant("always", min_instances=1), variant("cold")])
    finish(by["always"][0], summary(30.0))
    finish(by["cold"][0], summary(40.0, busy_s=10.0))
    for ts in by.values():
        svc.pin_add(user=user, trial=ts[0])
    client.force_login(user)
    page = client.get(reverse("compare-pinned")).content.decode()
    assert reverse("compare-pinned-exports") in page and 'name="run"' not in page.split('id="export-form"')[1][:600]
    r = client.post(reverse("compare-pinned-exports"), {"format": "csv"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 201, r.content
    status = r.json()
    assert status["experiment"] is None and status["filename"] == "pinned-trials.csv"
    data = C.compare_trials([ts[0] for ts in by.values()])
    content = b"".join(client.get(status["download_url"]).streaming_content)
    check_csv(data, content)
    export = Export.objects.get(code=status["code"])
    assert export.status == "succeeded" and len(export.trials) == 2
    pptx = exports.export_create(owner=user, fmt="pptx", trials=[ts[0] for ts in by.values()], inline=True)
    assert pptx.status == "succeeded", pptx.error
    check_pptx(data, (Path(media_root) / pptx.file.name).read_bytes())
    assert "Download pinned-trials.pptx" in client.get(reverse("export-detail", kwargs={"code": pptx.code})).content.decode()
    client.force_login(other_user)  # nothing pinned: refused; and the owner's export stays theirs
    r = client.post(reverse("compare-pinned-exports"), {"format": "csv"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "trials"
    assert client.get(status["download_url"]).status_code == 404


@pytest.mark.django_db
def test_an_export_whose_task_was_lost_is_failed_with_the_reason_not_polled_forever(finished_run, user, monkeypatch):
    import datetime

    from controlplane.experiments.reports import tasks

    monkeypatch.setattr(tasks.export_report, "apply_async", lambda **kw: None)  # sent, never run
    export = exports.export_create(owner=user, experiment=finished_run, fmt="zip")
    assert exports.export_get_for(user=user, code=export.code).status == "queued"
    Export.objects.filter(pk=export.pk).update(created=export.created - datetime.timedelta(hours=1))
    stuck = exports.export_get_for(user=user, code=export.code)
    assert stuck.status == "failed" and "reports worker" in stuck.error


@pytest.mark.django_db
def test_deleting_the_experiment_deletes_its_export_files(finished_run, user, media_root,
                                                          django_capture_on_commit_callbacks):
    export = exports.export_create(owner=user, experiment=finished_run, fmt="csv")
    path = Path(media_root) / export.file.name
    assert path.is_file()
    with django_capture_on_commit_callbacks(execute=True):
        services.experiment_delete(experiment=finished_run)
    assert not Export.objects.filter(pk=export.pk).exists() and not path.exists()
