"""The comparison page in headless Chromium, end to end: an experiment made in the editor, run by pressing Run
with a real Celery worker, compared while it runs (rows and curves update over the trials' sockets, no reload)
and after it finishes (verdict badges, the recommendation, five charts with points), then re-priced in place.

Everything runs as in production: daphne serves the pages, the static files and the WebSockets; the Run
button enqueues on the Redis broker; a Celery worker subprocess runs the trials and publishes their windows
on the channel layer. The test also listens on the trials' channel groups, so it knows when each window was
published and prints how long the page took to paint it.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time
from types import SimpleNamespace

import pytest
from django.db import connection

from controlplane.experiments import capacity, events
from controlplane.experiments import comparison as C
from controlplane.experiments import comparison_views as V
from controlplane.experiments.models import Experiment, Trial
from tests import processes
from tests.controlplane.test_profiles import stored

pytestmark = [pytest.mark.browser, pytest.mark.celery, pytest.mark.django_db(transaction=True)]

DETAIL_URL = re.compile(r".*/experiments/[0-9a-f-]{36}/$")
CANVASES = ("chart-cdf", "chart-pareto", "chart-breakdown", "chart-p99-time", "chart-instances")
LOAD_S = 4  # seconds of load per trial


@pytest.fixture
def stack(test_redis, tmp_path, media_root):
    """daphne (pages, static files, WebSockets) and a Celery worker serving the CPU pools, both on the test
    database, the test Redis DB and this test's key prefix."""
    env = processes.subprocess_env(redis_url=test_redis.url, channels_prefix=test_redis.prefix, media_root=media_root,
                                   TRIAL_SOFT_TIME_LIMIT_S=120)
    worker = processes.start_celery_worker(env, ["pool.cpu", "pool.auto"], tmp_path / "worker.log",
                                           name=f"cmp-{test_redis.prefix[-6:]}")
    port = processes.free_port()
    try:
        daphne = processes.start_daphne(env, port, tmp_path / "daphne.log")
    except BaseException:
        processes.stop(worker)
        raise
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", worker=worker, daphne=daphne, redis=test_redis)
    processes.stop(daphne)
    processes.stop(worker)


class GroupListener(threading.Thread):
    """Joins the trials' channel groups and notes when each window event arrives: the moment the worker
    published it, give or take Redis's delivery (the same path the page's socket takes, minus daphne)."""

    def __init__(self, url: str, prefix: str, codes: list[str]):
        super().__init__(daemon=True)
        self.url, self.prefix, self.codes = url, prefix, codes
        self.published: dict[tuple[str, int], float] = {}
        self.ready = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        from channels_redis.core import RedisChannelLayer

        layer = RedisChannelLayer(hosts=[self.url], prefix=self.prefix)
        channel = await layer.new_channel()
        for code in self.codes:
            await layer.group_add(events.group_name(code), channel)
        self.ready.set()
        while not self.done.is_set():
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.5)
            except TimeoutError:
                continue
            if message.get("type") == "trial.window":
                self.published.setdefault((message["trial"], message["index"]), time.time())
        for code in self.codes:
            await layer.group_discard(events.group_name(code), channel)


def make_in_the_editor(page) -> Experiment:
    """Two variants: an always-on one (a real instance process, the default runtime) and a scale-to-zero one
    with thread instances and two repeats: three trials of a few seconds each."""
    page.goto("/experiments/new/")
    page.fill("#id_name", "compare-in-browser")
    page.select_option("#id_device", "cpu")
    page.select_option("#id_accelerator", "cpu")
    page.select_option("#id_slo-percentile", "99")
    page.fill("#id_slo-latency_ms", "50")
    page.select_option("#id_workload-pattern", "constant")
    page.fill("#id_workload-rate_rps", "25")
    page.fill("#id_workload-duration_s", str(LOAD_S))
    first = page.locator(".row-variant").nth(0)
    first.locator("[name='variants-0-name']").fill("always-on")
    first.locator("[name='variants-0-min_instances']").fill("1")
    first.locator("[name='variants-0-max_instances']").fill("1")
    first.locator("[name='variants-0-repeats']").fill("1")
    page.click("#add-variant")
    second = page.locator(".row-variant").nth(1)
    second.locator("[name='variants-1-name']").fill("scale-to-zero")
    second.locator("[name='variants-1-runtime']").select_option("thread")
    second.locator("[name='variants-1-min_instances']").fill("0")
    second.locator("[name='variants-1-max_instances']").fill("1")
    second.locator("[name='variants-1-repeats']").fill("2")
    second.locator("[name='variants-1-ttl_s']").fill("0.5")
    page.click("#save-experiment")
    page.wait_for_url(DETAIL_URL)
    return Experiment.objects.get(name="compare-in-browser")


def chart_points(page, canvas: str) -> list[int]:
    """Points per dataset of a chart (bars: values)."""
    return page.evaluate("(id) => Chart.getChart(document.getElementById(id)).data.datasets"
                         ".map(d => d.data.filter(p => p !== null && (typeof p !== 'object' || p.y !== null)).length)",
                         canvas)


def cost_cells(page) -> list[str]:
    return page.eval_on_selector_all("tr.cmp-row td[data-metric$='_usd'] .cmp-value", "els => els.map(e => e.textContent)")


def test_a_run_made_in_the_editor_is_compared_live_then_decided_and_re_priced(authed_page, stack, user,
                                                                              price_catalogue, media_root):
    page = authed_page(stack, user)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    experiment = make_in_the_editor(page)
    assert experiment.variants.count() == 2

    page.click("#run-experiment")
    page.wait_for_url(DETAIL_URL)
    trials = list(Trial.objects.filter(experiment=experiment).order_by("id"))
    assert len(trials) == 3 and {t.queue for t in trials} == {"pool.cpu"}
    listener = GroupListener(stack.redis.url, stack.redis.prefix, [str(t.code) for t in trials])
    listener.start()
    assert listener.ready.wait(10)

    opened = time.perf_counter()
    page.click("#compare-experiment")
    page.wait_for_selector("body[data-cmp-ready='1']")
    page_open_s = time.perf_counter() - opened
    page.evaluate("window.notReloaded = true")
    assert page.get_attribute("body", "data-cmp-live") == "1"
    assert page.locator("tr.cmp-row").count() == 2
    statuses_at_open = page.eval_on_selector_all("tr.cmp-row", "rows => rows.map(r => r.dataset.status)")
    assert set(statuses_at_open) & {"queued", "running"}

    try:
        # While a trial runs, each window it publishes redraws the page: its row says running, its p99 curve
        # grows, and earlier trials' rows fill in with figures, all without a reload.
        page.wait_for_function("window.slsbenchComparison.renders.filter(r => r.cause === 'window').length >= 3",
                               timeout=60_000)
        assert page.locator("tr.cmp-row[data-status='running']").count() >= 1 or \
            page.get_attribute("body", "data-cmp-live") == "0"
        seen_points, live_rows = [], set()
        for _ in range(4):
            seen_points.append(sum(chart_points(page, "chart-p99-time")))
            live_rows.update(page.eval_on_selector_all("[data-live-row]", "els => els.map(e => e.textContent.trim())"))
            n = page.evaluate("window.slsbenchComparison.renders.length")
            page.wait_for_function(f"window.slsbenchComparison.renders.length > {n}", timeout=30_000)
        seen_points.append(sum(chart_points(page, "chart-p99-time")))
        assert seen_points[-1] > seen_points[0], (seen_points, errors)
        # the running row's latest second, redrawn as the windows come
        assert len(live_rows) >= 2 and all(t.startswith("second ") for t in live_rows), live_rows
        # The first trial's figures arrive in its row while the others still run.
        page.wait_for_function("document.querySelector(\"tr.cmp-row[data-key='always-on']\").dataset.verdict !== ''",
                               timeout=60_000)
        page.wait_for_selector("body[data-cmp-live='0']", timeout=120_000)
    finally:
        listener.done.set()
        listener.join(10)
    assert page.evaluate("window.notReloaded") is True
    for t in trials:
        t.refresh_from_db()
    assert [t.status for t in trials] == ["succeeded"] * 3, [(t.status, t.error) for t in trials]

    # ---- finished: the badges, the recommendation and the charts ------------------------------------------------
    data = C.experiment_comparison(experiment=experiment)
    verdicts = page.eval_on_selector_all("tr.cmp-row .cmp-verdict .cmp-badge", "els => els.map(e => e.dataset.verdict)")
    assert verdicts == [r["verdict"]["verdict"] for r in data["rows"]]
    assert set(verdicts) <= {"met", "not_met", "inconclusive"} and all(verdicts)
    badge_text = {"met": "✓ met", "not_met": "✗ not met", "inconclusive": "? inconclusive"}
    assert page.eval_on_selector_all("tr.cmp-row .cmp-verdict .cmp-badge", "els => els.map(e => e.textContent)") == [
        badge_text[v] for v in verdicts]
    assert page.inner_text("#cmp-recommendation-text") == data["recommendation"]["text"] != ""
    # The single-repeat variant carries its warning.
    assert page.locator("tr.cmp-row[data-key='always-on'] [data-flag='single_repeat']").count() == 1
    for canvas in CANVASES:
        points = chart_points(page, canvas)
        assert sum(points) > 0, (canvas, points)
    cdf = chart_points(page, "chart-cdf")
    assert cdf[0] > 10 and cdf[1] > 10  # one curve per variant
    assert page.evaluate("Chart.getChart(document.getElementById('chart-cdf')).options.scales.x.type") == "logarithmic"
    # A click opens a row's repeats, linked to their trial pages.
    page.click("tr.cmp-row[data-key='scale-to-zero'] .cmp-label")
    repeats = page.locator("tr.cmp-repeats[data-for='scale-to-zero']")
    assert repeats.is_visible() and repeats.locator("a.cmp-trial-link").count() == 2

    # ---- another price: every cost cell changes in place ----------------------------------------------------------
    before = cost_cells(page)
    renders = page.evaluate("window.slsbenchComparison.renders.length")
    switched = time.perf_counter()
    page.select_option("#pick-price", "H100-80GB")
    # The price's own redraw: a live refresh asked for before the switch (the last trial's status) may paint first.
    page.wait_for_function(f"window.slsbenchComparison.renders.slice({renders}).some(r => r.cause === 'price')")
    reprice_s = time.perf_counter() - switched
    after = cost_cells(page)
    assert len(after) == len(before) == 8 and all(a != "—" for a in after)
    assert all(a != b for a, b in zip(after, before, strict=True)), (before, after)
    note = page.inner_text("#cmp-pricing-note")
    assert "H100-80GB" in note and "2026-11-01" in note
    assert page.locator("tr.cmp-row .cmp-cpu-price").count() >= 2  # measured on CPU, priced as a GPU
    assert "price=H100-80GB" in page.url and page.evaluate("window.notReloaded") is True
    # the repeats stay open across the redraw
    assert page.locator("tr.cmp-repeats[data-for='scale-to-zero']").is_visible()

    assert not errors, errors

    # ---- timings ------------------------------------------------------------------------------------------------
    renders = page.evaluate("window.slsbenchComparison.renders")
    lags, server, waits, fetches = [], [], [], []
    for r in renders:
        server.append(r["server_ms"])
        fetches.append((r["painted"] - r["asked"]) / 1000.0)
        for w in r["windows"]:
            published = listener.published.get((w["trial"], w["index"]))
            if published is not None:
                lags.append(r["painted"] / 1000.0 - published)
                waits.append((r["asked"] - w["received"]) / 1000.0)
    assert lags, "no window was both heard by the test and painted by the page"
    lags.sort()
    print(f"\ncomparison page, live: worker publish -> browser paint over {len(lags)} windows: median "
          f"{statistics.median(lags) * 1000:.0f} ms, p90 {lags[int(0.9 * (len(lags) - 1))] * 1000:.0f} ms, max "
          f"{lags[-1] * 1000:.0f} ms (of which waiting for the next refresh: median {statistics.median(waits) * 1000:.0f} "
          f"ms; fetch + swap + draw: median {statistics.median(fetches) * 1000:.0f} ms); data view server time median {statistics.median(server):.0f} ms, max "
          f"{max(server):.0f} ms over {len(server)} refreshes; page opened in {page_open_s * 1000:.0f} ms; "
          f"re-priced and painted in {reprice_s * 1000:.0f} ms")
    assert statistics.median(lags) <= 1.0

    # ---- capacity at SLO: a simulated search of one variant gives its column and the knee chart --------------------
    assert page.inner_text("td.cmp-capacity[data-capacity='always-on'] .cmp-capacity-value") == "—"
    assert page.locator("#cmp-knee").is_hidden()
    assert page.locator("tr.cmp-row[data-key='always-on'] form.cmp-capacity-form input[name='variant']").get_attribute(
        "value") == "always-on"
    stored(model=experiment.functions.get().model_key, service_ms=5.0)  # the simulator's service time: the test's
    search = capacity.capacity_start(experiment=experiment, user=user, enqueue=False,
                                     options={"variant": "always-on", "simulated": True, "budget": 5, "probe_s": 10})
    outcome = []

    def run_search():  # off this thread: Playwright's event loop is on it
        try:
            outcome.append(capacity.capacity_run_by_id(search.id, worker="browser-test", redis_conn=None))
        finally:
            connection.close()

    runner = threading.Thread(target=run_search)
    runner.start()
    runner.join(120)
    assert outcome == ["succeeded"]
    search.refresh_from_db()
    page.reload()
    page.wait_for_selector("body[data-cmp-ready='1']")
    cell = page.locator("td.cmp-capacity[data-capacity='always-on']")
    assert cell.locator(".cmp-capacity-value").inner_text() == V.capacity_text(
        C.experiment_comparison(experiment=experiment)["rows"][0]["capacity"])["text"] != "—"
    assert cell.locator(".cmp-capacity-simulated").count() == 1 and "conservative" in cell.inner_text()
    assert page.inner_text("td.cmp-capacity[data-capacity='scale-to-zero'] .cmp-capacity-value") == "—"
    assert page.locator("#cmp-knee").is_visible()
    counted = [p for p in search.result["probes"] if p["counted"]]
    knee = chart_points(page, "chart-knee")  # the search's probes that count, then the SLO line's two ends
    assert knee == [len(counted), 2], (knee, counted)
    # its page: the result and the same chart
    cell.locator("a.cmp-capacity-value").click()
    page.wait_for_selector("#capacity-result")
    assert page.get_attribute("#capacity-status", "data-status") == "succeeded"
    assert page.locator("#capacity-probes tbody tr").count() == len(search.result["probes"])
    assert sum(chart_points(page, "chart-knee")) == len(counted) + 2
    assert not errors, errors
