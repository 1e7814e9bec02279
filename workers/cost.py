"""Cost of a trial under serverless (per-second) and provisioned (per-hour, always-on) billing.

Serverless: each instance is billed from its wake-up (the start of its cold start) until the later
of its eviction and the provider's idle tail after its last request (providers keep billing a few
seconds of idle time after the last response even when the platform evicts sooner), at least
min_billed_s, rounded up to the billing granularity, times $/s times the instance's device share.

Provisioned: the devices are rented for the whole run whatever the load: devices x hours x $/h.

All figures are Python floats or None; a missing price gives None everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from workers.records import InstanceLife
from workers.spec import PriceSpec

SECONDS_PER_MONTH = 30 * 86_400.0
HOURS_PER_MONTH = 720.0
_COST_KEYS = ("serverless_usd", "provisioned_usd", "billed_instance_s", "serverless_per_1k_usd",
              "provisioned_per_1k_usd", "serverless_per_1k_good_usd", "provisioned_per_1k_good_usd",
              "monthly_serverless_usd", "monthly_provisioned_usd")


def _billed_end_s(inst: InstanceLife, price: PriceSpec) -> float:
    return max(inst.end_s, inst.last_busy_end_s + price.idle_tail_s)


def billed_seconds(inst: InstanceLife, price: PriceSpec) -> float:
    """Seconds the provider bills for one instance: tail, minimum and granularity applied."""
    raw = max(price.min_billed_s, _billed_end_s(inst, price) - inst.start_s, 0.0)
    g = price.granularity_s
    if g and g > 0:
        # The small epsilon keeps 2.0000000001 s (float noise from subtracting clock readings) at 2 s.
        raw = math.ceil(raw / g - 1e-9) * g
    return raw


def _per_1k(usd: float, count: int) -> float | None:
    return usd / count * 1000.0 if count > 0 else None


def price_dict(price: PriceSpec | None) -> dict | None:
    if price is None:
        return None
    return {"name": price.name, "on_demand_usd_per_h": float(price.on_demand_usd_per_h),
            "serverless_usd_per_s": float(price.serverless_usd_per_s), "granularity_s": float(price.granularity_s),
            "idle_tail_s": float(price.idle_tail_s), "min_billed_s": float(price.min_billed_s)}


def trial_cost(*, instances: Sequence[InstanceLife], price: PriceSpec | None, run_s: float, devices: int,
               completed: int, good: int, workload_duration_s: float) -> dict:
    """Serverless and provisioned cost of one trial, per 1,000 requests, and a monthly projection.

    completed: requests with outcome ok; good: ok and within the SLO latency. The monthly serverless
    projection scales the trial's cost from the workload time it represents (workload_duration_s, not
    compressed) to 30 days. With time compression the instances lived in compressed time, so the
    projection is right for busy time (same work, same compute seconds) and understates idle keep-alive
    time by up to the compression factor; read it as a lower bound for keep-alive-heavy variants.
    """
    if price is None:
        return {**dict.fromkeys(_COST_KEYS), "price": None}
    billed = [billed_seconds(i, price) for i in instances]
    serverless = sum(b * price.serverless_usd_per_s * i.share for b, i in zip(billed, instances, strict=True))
    provisioned = devices * run_s / 3600.0 * price.on_demand_usd_per_h
    monthly_serverless = serverless * SECONDS_PER_MONTH / workload_duration_s if workload_duration_s > 0 else None
    return {
        "serverless_usd": float(serverless),
        "provisioned_usd": float(provisioned),
        "billed_instance_s": float(sum(billed)),
        "serverless_per_1k_usd": _per_1k(serverless, completed),
        "provisioned_per_1k_usd": _per_1k(provisioned, completed),
        "serverless_per_1k_good_usd": _per_1k(serverless, good),
        "provisioned_per_1k_good_usd": _per_1k(provisioned, good),
        "monthly_serverless_usd": None if monthly_serverless is None else float(monthly_serverless),
        "monthly_provisioned_usd": float(devices * price.on_demand_usd_per_h * HOURS_PER_MONTH),
        "price": price_dict(price),
    }


def cost_so_far_usd(instances: Sequence[InstanceLife], price: PriceSpec | None, now_s: float) -> float | None:
    """Serverless cost accrued up to now_s, unrounded, for live windows.

    An instance still alive (evicted False) accrues up to now_s; an evicted one up to the later of its
    eviction and its idle tail, capped at now_s. Minimum billed time and granularity are applied only
    in the final bill (trial_cost), so the live figure rises smoothly.
    """
    if price is None:
        return None
    total = 0.0
    for inst in instances:
        end = _billed_end_s(inst, price) if inst.evicted else now_s
        seconds = min(end, now_s) - inst.start_s
        if seconds > 0:
            total += seconds * price.serverless_usd_per_s * inst.share
    return float(total)
