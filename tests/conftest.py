import json
import os

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")


def frozen_run(experiment, data: dict | None = None) -> dict:
    """The fields Run gives a run's trials (`services.run_fields`: the frozen spec, stored once, and the run time,
    expected requests and time limit), for tests that store trials by hand. `data`: the spec dict to freeze
    (default: the experiment as stored)."""
    from controlplane.experiments import services, spec_io
    from workers import spec as S

    data = json.loads(json.dumps(data)) if data is not None else spec_io.experiment_to_dict(experiment)
    return services.run_fields(experiment=experiment, spec=S.parse_experiment(data), data=data)


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="owner", password="owner-pass-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="outsider", password="outsider-pass-123")


@pytest.fixture
def spec_data():
    """A small valid experiment spec dict, a fresh copy per test: the document spec files and the API take."""
    return {
        "name": "classifier-poc",
        "device": "cpu",
        "accelerator": "cpu",
        "slo": {"percentile": 99, "latency_ms": 50, "max_violation_rate": 0.01},
        "functions": [{"name": "classify", "model": "mlp-small"}],
        "workload": {"pattern": "poisson", "rate_rps": 20, "duration_s": 5, "seed": 7},
        "variants": [
            {"name": "dedicated", "batching": {"mode": "none"}, "min_instances": 1, "max_instances": 1},
            {"name": "batched", "batching": {"mode": "fixed", "max_batch_size": 8, "max_queue_delay_ms": 4},
             "repeats": 2},
        ],
    }


@pytest.fixture
def media_root(settings, tmp_path):
    """Stored files (traces, artifacts) go to a per-test folder instead of var/media."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default PBKDF2 hasher costs ~0.25 s per user created or logged in; tests don't need its strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Login and token throttles count attempts in the cache: each test starts with none counted.
    from django.core.cache import cache

    cache.clear()


# ---- execution tests (helper-5): Redis, channel layer, trials ------------------------------------------
# A Redis DB of their own (not the default 0 that a running demo or dev worker uses), and a key prefix per
# test, so channel groups, queues and device leases never collide with anything else.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture
def test_redis(settings):
    """Points REDIS_URL and the channel layer at the test Redis DB with a fresh prefix.
    Yields (client, url, prefix)."""
    import uuid
    from types import SimpleNamespace

    import redis

    prefix = f"slsbench-test-{uuid.uuid4().hex[:10]}"
    settings.REDIS_URL = TEST_REDIS_URL
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [TEST_REDIS_URL], "prefix": prefix}}}
    settings.DEVICE_LEASE_KEY_PREFIX = f"{prefix}:lease"  # sessions running at once don't share leases
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.ping()
    yield SimpleNamespace(client=client, url=TEST_REDIS_URL, prefix=prefix)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def price_catalogue(db):
    """The seeded price catalogue. Transactional tests flush tables afterwards, data migrations' rows
    included, so tests that need the prices re-seed them from the migration's own list."""
    import importlib

    from controlplane.experiments.models import PriceEntry

    seed = importlib.import_module("controlplane.experiments.migrations.0002_seed_prices")
    for row in seed.PRICES:
        PriceEntry.objects.update_or_create(name=row["name"], defaults=row)


@pytest.fixture
def queued_trials(user, spec_data, price_catalogue):
    """An experiment of `user` with one run of queued trials (nothing enqueued anywhere)."""
    from controlplane.experiments import services

    experiment = services.experiment_import(owner=user, data=spec_data)
    return services.experiment_run(experiment=experiment, user=experiment.owner, enqueue=False)
