"""The device lease: one trial per device at a time, across every worker process on a host.

Two trials on one device would measure each other (DESIGN.md, rule 3). Workers coordinate through
a Redis key per device holding a random token, set with `SET NX PX` and a TTL. The holder renews it
from its heartbeat; renew and release are compare-and-act Lua scripts, so a worker whose lease has
expired (a long GC pause, a frozen VM) can never extend or delete a lease someone else now holds.
A crashed worker's lease simply expires after `ttl_s`.

The key names the physical device, its device id (`physical_device_id`): the worker's DEVICE_ID when set, else a
GPU's UUID, else host:device. "cpu" or "cuda:0" on two machines sharing one Redis are different devices;
two workers on one host need a DEVICE_ID each when they stand for different devices (two CPU core sets,
say), and must share one when they stand for the same.
"""

from __future__ import annotations

import socket
import uuid

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
