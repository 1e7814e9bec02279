"""The Profile button and the profile pages in headless Chromium, end to end: pressing Profile on an experiment
enqueues `profiles.measure` on the experiment's device pool, a real Celery worker measures a short profile with
real instance processes, the list shows it running then finished, and the detail page draws both charts and
offers the JSON download. daphne serves the pages as in production."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from controlplane.experiments import services
from controlplane.experiments.models import Profile
from tests import processes
from workers import profiling

pytestmark = [pytest.mark.browser, pytest.mark.celery, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(test_redis, tmp_path, media_root):
    env = processes.subprocess_env(redis_url=test_redis.url, channels_prefix=test_redis.prefix, media_root=media_root)
    worker = processes.start_celery_worker(env, ["pool.cpu", "pool.auto"], tmp_path / "worker.log",
                                           name=f"profile-{test_redis.prefix[-6:]}")
    port = processes.free_port()
    try:
        daphne = processes.start_daphne(env, port, tmp_path / "daphne.log")
    except BaseException:
        processes.stop(worker)
        raise
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", worker=worker)
    processes.stop(daphne)
    processes.stop(worker)


def drawn_pixels(page, canvas: str) -> int:
    """Non-transparent pixels of a canvas: 0 for a chart that never drew."""
    return page.evaluate("(id) => { const c = document.getElementById(id); const d = c.getContext('2d')"
                         ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
                         " for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }", canvas)


def test_the_profile_button_measures_on_the_worker_and_the_page_charts_the_result(authed_page, stack, user, spec_data,
                                                                                   price_catalogue):
    experiment = services.experiment_import(owner=user, data=spec_data)
    page = authed_page(stack, user)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(experiment.get_absolute_url())

    page.check("#profile-short")
    page.click("#profile-experiment")
    page.wait_for_url(re.compile(r".*/profiles/$"))
    (profile,) = Profile.objects.all()
    assert profile.queue == "pool.cpu" and profile.owner == user
    assert page.locator(f"tr[data-profile='{profile.code}']").count() == 1

    # The list refreshes itself while a profile is queued or running.
    row = f"tr[data-profile='{profile.code}'][data-status='succeeded']"
    page.wait_for_selector(row, timeout=120_000, state="attached")
    profile.refresh_from_db()
    assert profile.worker.startswith("profile-")  # measured by the Celery worker, not in this process
    page.click(f"{row} a.row-link")
    page.wait_for_selector("#chart-latency")
    # The canvas is in the page before the script at its end has drawn on it: wait for the charts themselves.
    page.wait_for_function("Array.isArray(window.profileCharts)")

    datasets = page.evaluate("window.profileCharts.map(c => c.data.datasets.map(d => d.data.length))")
    levels = profile.data["sharing_levels"]
    sizes = profile.data["batch_sizes"]
    assert datasets == [[len(sizes)] * (2 * len(levels)), [len(sizes)] * len(levels)]  # p50 + p99 per level
    for canvas in ("chart-latency", "chart-throughput"):
        assert drawn_pixels(page, canvas) > 1000, canvas
    assert page.locator("#cold-start-table tbody tr").count() == len(profiling.PHASES)
    assert page.locator("#service-table tbody tr").count() == len(sizes) * len(levels)
    assert profile.hardware in page.text_content("h1 + p")

    with page.expect_download() as download:
        page.click("#download-json")
    data = json.loads(open(download.value.path()).read())
    assert profiling.validate_profile(data) == profile.data
    assert errors == []
