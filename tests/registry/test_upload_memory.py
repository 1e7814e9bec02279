"""A large upload streams through the web process: its peak memory does not grow with the file
(`manage.py bench upload` at a test-sized file; the figures are printed, the only assertion is relative to the
file's own size)."""

from __future__ import annotations

import pytest

from controlplane.registry.bench_upload import run
from controlplane.registry.models import Model
from tests.processes import subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_large_upload_does_not_grow_the_web_process_by_its_size(test_redis, media_root):
    size_mb = 64
    env = subprocess_env(redis_url=test_redis.url, channels_prefix=test_redis.prefix, media_root=media_root)
    result = run(size_mb, env=env)
    print("\n" + "\n".join(f"  {k:36} {v}" for k, v in result.items()))
    assert result["status"] == 201, result["detail"]
    assert result["file_mb"] >= size_mb
    # Holding the file in memory would add at least its size; streaming adds (nearly) nothing.
    assert result["server_added_by_upload_mib"] < size_mb / 4
    assert not Model.objects.exists()  # the benchmark deletes what it stored
