"""Workers report the devices they serve in Redis (real Redis, the test DB); the editor offers those first.

The registry lives under the broker's key prefix, which each test sets to its own, so nothing here sees a
developer's workers or another session's.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from django.urls import reverse

from controlplane.experiments import selectors, services, worker_registry
from controlplane.experiments.forms import NO_WORKER, device_choices

pytestmark = pytest.mark.django_db


@pytest.fixture
def registry(settings, test_redis):
    """The worker registry of this test: its own key prefix on the test Redis DB."""
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS,
                                                "global_keyprefix": f"{test_redis.prefix}:"}
    return test_redis


def report(hostname: str, queues: list[str]) -> dict:
    return worker_registry.report_for(hostname, queues)


# ---- what a worker reports --------------------------------------------------------------------------------
@pytest.mark.parametrize("queues, devices, resolves", [
    (["pool.cpu", "pool.auto"], ["auto", "cpu"], {"auto": "cpu"}),
    (["pool.cuda-0", "pool.cuda", "pool.auto"], ["auto", "cuda", "cuda:0"], {"auto": "cuda:0", "cuda": "cuda:0"}),
    (["pool.cuda-3"], ["cuda:3"], {}),
    (["test.private", "celery"], [], {}),
])
def test_a_worker_reports_the_devices_of_the_pools_it_consumes(queues, devices, resolves):
    r = report("w@host", queues)
    assert r["devices"] == devices and r["resolves"] == resolves and r["hostname"] == "w@host"
    assert r["pools"] == sorted(q for q in queues if q.startswith("pool."))


def test_the_key_names_the_worker_under_the_brokers_prefix(registry):
    assert worker_registry.worker_key("cpu-1@vm") == f"{registry.prefix}:slsbench:workers:cpu-1@vm"


def test_reports_are_stored_with_a_ttl_and_read_back(registry):
    worker_registry.register(registry.client, report("cpu-1@a", ["pool.cpu", "pool.auto"]), ttl_s=30)
    worker_registry.register(registry.client, report("gpu-1@b", ["pool.cuda-0", "pool.cuda", "pool.auto"]), ttl_s=30)
    key = worker_registry.worker_key("cpu-1@a")
    assert 25_000 < registry.client.pttl(key) <= 30_000
    assert json.loads(registry.client.get(key))["devices"] == ["auto", "cpu"]
    assert [r["hostname"] for r in worker_registry.read_reports(registry.client)] == ["cpu-1@a", "gpu-1@b"]

    seen = selectors.worker_devices()
    assert seen["devices"] == {"auto": ["cpu-1@a", "gpu-1@b"], "cpu": ["cpu-1@a"], "cuda": ["gpu-1@b"],
                               "cuda:0": ["gpu-1@b"]}
    assert seen["resolves"] == {"auto": ["cpu", "cuda:0"], "cuda": ["cuda:0"]}


def test_a_worker_that_stops_heart_beating_drops_out_after_its_ttl(registry):
    worker_registry.register(registry.client, report("gone@a", ["pool.cpu"]), ttl_s=0.3)
    assert selectors.worker_devices()["devices"] == {"cpu": ["gone@a"]}
    time.sleep(0.5)
    assert selectors.worker_devices()["devices"] == {}


def test_the_heartbeat_keeps_the_report_alive_and_a_clean_stop_removes_it(registry):
    beat = worker_registry.Heartbeat(registry.client, report("cpu-2@a", ["pool.cpu"]), interval_s=0.1, ttl_s=0.4)
    beat.start()
    try:
        time.sleep(1.0)  # well past the TTL: only the beats keep it
        assert selectors.worker_devices()["devices"] == {"cpu": ["cpu-2@a"]}
    finally:
        beat.stop()
    assert not beat.is_alive()
    assert selectors.worker_devices()["devices"] == {}


def test_the_celery_signal_handlers_register_and_unregister(registry):
    consumer = SimpleNamespace(hostname="sig@host", app=SimpleNamespace(amqp=SimpleNamespace(
        queues=SimpleNamespace(consume_from={"pool.cpu": None, "pool.auto": None}))))
    worker_registry.on_worker_ready(consumer)
    try:
        assert selectors.worker_devices()["devices"] == {"auto": ["sig@host"], "cpu": ["sig@host"]}
    finally:
        worker_registry.on_worker_shutdown(consumer)
    assert selectors.worker_devices()["devices"] == {}


def test_junk_under_the_prefix_is_ignored_and_no_redis_means_unknown(registry, settings):
    registry.client.set(f"{worker_registry.key_prefix()}:junk", "not json")
    assert selectors.worker_devices()["devices"] == {}
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    assert selectors.worker_devices() is None


# ---- the editor's device select ----------------------------------------------------------------------------
def test_reported_devices_come_first_and_the_others_are_marked_but_selectable():
    choices = device_choices({"devices": {"auto": ["w@a"], "cpu": ["w@a", "w@b"]}, "resolves": {"auto": ["cpu"]}})
    assert choices[:2] == [("auto", "auto (cpu on 1 worker)"), ("cpu", "cpu (on 2 workers)")]
    rest = dict(choices[2:])
    assert set(rest) == {"cuda"} | {f"cuda:{i}" for i in range(8)}
    assert all(label.endswith(f"({NO_WORKER})") for label in rest.values())


def test_without_reports_the_list_is_plain_and_a_spec_files_device_is_kept():
    assert device_choices(None)[:3] == [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")]
    assert ("cuda:12", "cuda:12 (no worker has this device)") in device_choices({"devices": {}}, "cuda:12")
    assert device_choices({"devices": {"cuda:12": ["g@x"]}})[0] == ("cuda:12", "cuda:12 (on 1 worker)")


@pytest.fixture
def owner_client(client, user):
    client.force_login(user)
    return client


def select_options(html: str, name: str) -> list[tuple[str, str, bool]]:
    from html.parser import HTMLParser

    class Options(HTMLParser):
        def __init__(self):
            super().__init__()
            self.inside, self.out = False, []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "select":
                self.inside = a.get("name") == name
            elif tag == "option" and self.inside:
                self.out.append([a.get("value"), "", "selected" in a])

        def handle_data(self, data):
            if self.inside and self.out:
                self.out[-1][1] += data

        def handle_endtag(self, tag):
            if tag == "select":
                self.inside = False

    p = Options()
    p.feed(html)
    return [(v, label.strip(), sel) for v, label, sel in p.out]


def test_the_editor_offers_the_reported_devices_on_a_host_without_a_gpu(owner_client, registry, price_catalogue):
    worker_registry.register(registry.client, report("cpu-1@vm", ["pool.cpu", "pool.auto"]))
    options = select_options(owner_client.get(reverse("experiment-create")).content.decode(), "device")
    assert [v for v, _, _ in options[:2]] == ["auto", "cpu"]
    assert options[0][1] == "auto (cpu on 1 worker)"
    cuda = {v: label for v, label, _ in options if v.startswith("cuda")}
    assert len(cuda) == 9 and all(NO_WORKER in label for label in cuda.values())


def test_a_new_experiment_starts_with_the_cpu_price_entry_where_auto_means_cpu(owner_client, registry,
                                                                                 price_catalogue):
    worker_registry.register(registry.client, report("cpu-1@vm", ["pool.cpu", "pool.auto"]))
    options = select_options(owner_client.get(reverse("experiment-create")).content.decode(), "accelerator")
    assert [v for v, _, selected in options if selected] == ["cpu"]
    assert options[0][0] == "" and "priced with the cpu entry" in options[0][1]


def test_where_auto_means_a_gpu_the_price_entry_is_left_to_the_user(owner_client, registry, price_catalogue):
    worker_registry.register(registry.client, report("gpu-1@vm", ["pool.cuda-0", "pool.cuda", "pool.auto"]))
    options = select_options(owner_client.get(reverse("experiment-create")).content.decode(), "accelerator")
    assert [v for v, _, selected in options if selected] in ([], [""])


def test_editing_keeps_the_stored_price_entry(owner_client, user, registry, price_catalogue):
    experiment = services.experiment_import(owner=user, data={
        "name": "no prices", "device": "cpu", "functions": [{"name": "f", "model": "mlp-small"}],
        "workload": {"pattern": "constant", "rate_rps": 5, "duration_s": 10}, "variants": [{"name": "v"}]})
    options = select_options(owner_client.get(reverse("experiment-edit", args=[experiment.code])).content.decode(),
                             "accelerator")
    assert [v for v, _, selected in options if selected] in ([], [""])  # not silently changed on edit


def test_the_experiment_page_warns_when_it_has_no_price_entry(owner_client, user, price_catalogue):
    bare = services.experiment_import(owner=user, data={
        "name": "no prices", "device": "cpu", "functions": [{"name": "f", "model": "mlp-small"}],
        "workload": {"pattern": "constant", "rate_rps": 5, "duration_s": 10}, "variants": [{"name": "v"}]})
    priced = services.experiment_import(owner=user, data={
        "name": "priced", "device": "cpu", "accelerator": "cpu", "functions": [{"name": "f", "model": "mlp-small"}],
        "workload": {"pattern": "constant", "rate_rps": 5, "duration_s": 10}, "variants": [{"name": "v"}]})
    html = owner_client.get(bare.get_absolute_url()).content.decode()
    assert 'id="no-price-warning"' in html and "No price entry." in html
    assert reverse("experiment-edit", args=[bare.code]) in html and reverse("price-list") in html
    assert 'id="no-price-warning"' not in owner_client.get(priced.get_absolute_url()).content.decode()
