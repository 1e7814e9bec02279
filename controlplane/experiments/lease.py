"""The device lease: one trial per device at a time, across every worker process on a host.

Two trials on one device would measure each other (docs/architecture.md, rule 3). Workers coordinate through
a Redis key per device holding a random token, set with `SET NX PX` and a TTL. The holder renews it
from its heartbeat; renew and release are compare-and-act Lua scripts, so a worker whose lease has
expired (a long GC pause, a frozen VM) can never extend or delete a lease someone else now holds.
A crashed worker's lease simply expires after `ttl_s`; a reaper that knows the token (stored on the trial
row) frees it at once with `release_token`.

`LeaseKeeper` renews the lease on a thread of its own, so nothing else (a slow database write, a stuck
publish) can delay a renewal; the engine polls `keeper.lost` and stops its load as soon as it is set.

The key names the physical device, its device id (`physical_device_id`): the worker's DEVICE_ID when set, else a
GPU's UUID, else host:device. "cpu" or "cuda:0" on two machines sharing one Redis are different devices;
two workers on one host need a DEVICE_ID each when they stand for different devices (two CPU core sets,
say), and must share one when they stand for the same.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid

import redis

log = logging.getLogger(__name__)

# KEYS[1] = lease key, ARGV[1] = token, ARGV[2] = ttl in ms
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] = lease key, ARGV[1] = token
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

KEY_PREFIX = "slsbench:lease"


def configured_prefix() -> str:
    """settings.DEVICE_LEASE_KEY_PREFIX if set. Only test sessions set it: two sessions running at once on
    one host must not wait for each other's leases (in production they would be right to)."""
    from django.conf import settings

    return getattr(settings, "DEVICE_LEASE_KEY_PREFIX", None) or KEY_PREFIX


def physical_device_id(device_name: str, *, configured: str = "", gpu_uuid: str | None = None, host: str | None = None) -> str:
    """The name of the physical device a lease is for: `configured` (settings.DEVICE_ID) wins, then a GPU's
    UUID (the same GPU whatever CUDA_VISIBLE_DEVICES calls it), then host:device."""
    return configured or gpu_uuid or f"{host or socket.gethostname()}:{device_name}"


def lease_key(device_name: str, *, host: str | None = None, prefix: str | None = None, device: str | None = None
              ) -> str:
    return f"{prefix or configured_prefix()}:{device or physical_device_id(device_name, host=host)}"


class LeaseBusy(Exception):
    """The device is leased by another trial; try again later."""

    def __init__(self, device_name: str, holder: str | None):
        self.device_name = device_name
        self.holder = holder
        super().__init__(f"device {device_name} is busy (held by {holder or 'an expired holder'})")


class DeviceLease:
    """A TTL lock on one device of this host. `owner` is informational (who holds it, for messages)."""

    def __init__(self, redis_client, device_name: str, owner: str, ttl_s: float = 30.0, *,
                 host: str | None = None, prefix: str | None = None, device_id: str | None = None):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.redis = redis_client
        self.device_name = device_name
        self.owner = owner
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.device_id = device_id or physical_device_id(device_name, host=host)
        self.key = lease_key(device_name, prefix=prefix, device=self.device_id)
        # The owner is readable in the value (for "held by ..." messages); the uuid makes it unique even
        # when the same worker takes the same device twice.
        self.token = f"{owner}|{uuid.uuid4().hex}"
        self._renew = redis_client.register_script(_RENEW)
        self._release = redis_client.register_script(_RELEASE)
        self.held = False

    def acquire(self) -> bool:
        """Take the lease if nobody holds it. Never waits: the caller decides how to retry."""
        self.held = bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        return self.held

    def acquire_or_raise(self) -> None:
        if not self.acquire():
            raise LeaseBusy(self.device_name, self.holder())

    def renew(self) -> bool:
        """Push the expiry out by ttl_s again. False: the lease expired and may belong to someone else."""
        self.held = bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        return self.held

    def release(self) -> bool:
        """Give the lease back. False if it was no longer ours (expired); never deletes another's lease."""
        released = bool(self._release(keys=[self.key], args=[self.token]))
        self.held = False
        return released

    def holder(self) -> str | None:
        """Owner name of whoever holds the lease now (None: free)."""
        value = self.redis.get(self.key)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return value.split("|", 1)[0]

    def __enter__(self) -> DeviceLease:
        self.acquire_or_raise()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def release_token(redis_client, key: str, token: str) -> bool:
    """Delete the lease `key` only if it still holds `token` (a lost worker's lease, freed by a reaper)."""
    return bool(redis_client.register_script(_RELEASE)(keys=[key], args=[token]))


def token_held(redis_client, key: str, token: str) -> bool:
    """Whether the lease `key` still holds `token`: its holder renewed it within the TTL."""
    value = redis_client.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value == token


class LeaseKeeper(threading.Thread):
    """Renews a held lease every `interval_s` on its own thread, and says when it is lost.

    Lost means: a renewal found the lease gone or someone else's (it expired), a Redis error lasted so
    long that the lease may expire before the next renewal, or this thread died of anything unexpected.
    `reason` then says which; the caller stops the load at once (another trial may take the device).
    """

    def __init__(self, lease: DeviceLease, *, interval_s: float):
        super().__init__(name=f"lease-{lease.device_name}", daemon=True)
        self.lease = lease
        self.interval_s = interval_s
        self.lost = threading.Event()
        self.reason = ""
        self._stop_event = threading.Event()
        self._renewed_at = time.monotonic()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval_s):
                self._renew_once()
                if self.lost.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - a dead keeper must never leave the load running unleased
            self._lose(f"the lease renewal thread died: {type(exc).__name__}: {exc}")
            raise

    def _renew_once(self) -> None:
        ttl_s = self.lease.ttl_ms / 1000.0
        try:
            if self.lease.renew():
                self._renewed_at = time.monotonic()
                return
            self._lose(f"the device lease on {self.lease.device_name} was gone at renewal and may now be held by "
                       "another trial (it expired while the worker stalled, or Redis lost it in a restart)")
        except redis.RedisError as exc:
            # The lease is still ours until its TTL runs out; stop before it can, not after.
            if time.monotonic() - self._renewed_at + 2 * self.interval_s >= ttl_s:
                self._lose(f"could not renew the device lease on {self.lease.device_name} for "
                           f"{time.monotonic() - self._renewed_at:.0f} s (Redis unreachable: {exc})")
            else:
                log.warning("could not renew the lease on %s; retrying", self.lease.device_name, exc_info=True)

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            log.error("%s", reason)
            self.lost.set()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5)
