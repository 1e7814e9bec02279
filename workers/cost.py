"""Cost of a trial under serverless (per-second) and provisioned (per-hour, always-on) billing.

Both are billed over one span: from the first instance start (prestarts included: negative run-clock
times; never later than 0, the first intended arrival, since an always-on deployment is up before the
load) to the end of the drain (the run's end_s).

Serverless: each instance is billed from its wake-up (the start of its cold start) until the later of
its eviction and the provider's idle tail after its last request (providers keep billing a few seconds
of idle time after the last response even when the platform evicts sooner), at least min_billed_s,
rounded up to the billing granularity: its billed interval. It pays $/s for its real share of a device:
  exclusive  - one device;
  spatial    - its slice (InstanceLife.share: CPU core-set share, MPS percentage, MIG slice size);
  time_slice - instances on one device share it: the union of their billed intervals is billed as one
               device, each moment's cost split equally between the instances billed at that moment
               (n instances alive at once cost one device, not n).
Provisioned: the devices are rented for the whole span whatever the load: devices x span x $/h.

One time axis: every figure is wall time as run. A compressed run (time_compression c > 1) is an
accelerated replay: arrivals came c times faster but keep-alive TTLs, cold starts and billing stayed in
wall time, so no monthly projection is derived by scaling time (monthly_* are None and monthly_note
says why). An uncompressed run projects a month from the same billed spans: the span's serverless cost
scaled to 30 days, provisioned devices x $/h x 720.

The summary keeps each instance's billed span (`spans`) so `reprice` gives the figures for another price
entry without re-running. The list is capped at MAX_STORED_SPANS instances; a longer one is not stored
(`spans` None, `instances` says how many there were) and such a trial cannot be repriced.

All figures are Python floats or None; a missing price gives None for every figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from workers.records import InstanceLife
from workers.spec import PriceSpec

SECONDS_PER_MONTH = 30 * 86_400.0
HOURS_PER_MONTH = 720.0
SHARING_MODES = ("exclusive", "time_slice", "spatial")
# About 110 bytes of JSON per span: the cap keeps a trial's summary near 110 kB at worst.
MAX_STORED_SPANS = 1_000
SPAN_DECIMALS = 6  # stored times are rounded to 1 us; the bill is computed from the rounded times
_FIGURE_KEYS = ("serverless_usd", "provisioned_usd", "billed_instance_s", "billed_device_s",
                "serverless_per_1k_usd", "provisioned_per_1k_usd", "serverless_per_1k_good_usd",
                "provisioned_per_1k_good_usd", "monthly_serverless_usd", "monthly_provisioned_usd")
_INPUT_KEYS = ("sharing", "devices", "time_compression", "span_start_s", "span_end_s", "instances", "spans")


def _billed_end_s(end_s: float, last_busy_end_s: float, price: PriceSpec) -> float:
    return max(end_s, last_busy_end_s + price.idle_tail_s)


def _billed_s(start_s: float, end_s: float, last_busy_end_s: float, price: PriceSpec) -> float:
    raw = max(price.min_billed_s, _billed_end_s(end_s, last_busy_end_s, price) - start_s, 0.0)
    g = price.granularity_s
    if g and g > 0:
        # The small epsilon keeps 2.0000000001 s (float noise from subtracting clock readings) at 2 s.
        raw = math.ceil(raw / g - 1e-9) * g
    return raw


def billed_seconds(inst: InstanceLife, price: PriceSpec) -> float:
    """Seconds the provider bills for one instance: tail, minimum and granularity applied."""
    return _billed_s(inst.start_s, inst.end_s, inst.last_busy_end_s, price)


def _check_sharing(sharing: str) -> None:
    if sharing not in SHARING_MODES:
        raise ValueError(f"unknown sharing mode {sharing!r} (one of {', '.join(SHARING_MODES)})")


def device_seconds(intervals: Sequence[tuple[float, float]], shares: Sequence[float], sharing: str) -> list[float]:
    """Device-seconds each interval (start, end) is billed for under the sharing mode: exclusive one device,
    spatial its share, time_slice an equal part of the one device with the intervals open at each moment
    (their sum is the length of the union)."""
    _check_sharing(sharing)
    if sharing != "time_slice":
        return [max(0.0, e - s) * (share if sharing == "spatial" else 1.0)
                for (s, e), share in zip(intervals, shares, strict=True)]
    out = [0.0] * len(intervals)
    events = []
    for i, (s, e) in enumerate(intervals):
        if e > s:
            events.append((s, 1, i))
            events.append((e, 0, i))
    events.sort()  # at equal times an interval ends (0) before the next begins (1)
    active: set[int] = set()
    prev = 0.0
    for t, begins, i in events:
        if active and t > prev:
            part = (t - prev) / len(active)
            for j in active:
                out[j] += part
        prev = t
        if begins:
            active.add(i)
        else:
            active.discard(i)
    return out


def _per_1k(usd: float, count: int) -> float | None:
    return usd / count * 1000.0 if count > 0 else None


def price_dict(price: PriceSpec | None) -> dict | None:
    if price is None:
        return None
    return {"name": price.name, "on_demand_usd_per_h": float(price.on_demand_usd_per_h),
            "serverless_usd_per_s": float(price.serverless_usd_per_s), "granularity_s": float(price.granularity_s),
            "idle_tail_s": float(price.idle_tail_s), "min_billed_s": float(price.min_billed_s)}


def _round(t: float) -> float:
    return round(float(t), SPAN_DECIMALS)


def cost_inputs(instances: Sequence[InstanceLife], *, end_s: float, devices: int, sharing: str,
                time_compression: float) -> dict:
    """What the bill depends on besides the price and the request counts: the billing span and every
    instance's span (all of them: trial_cost caps the stored list)."""
    _check_sharing(sharing)
    spans = [{"function": int(i.function), "instance": int(i.instance), "start_s": _round(i.start_s),
              "end_s": _round(i.end_s), "last_busy_end_s": _round(i.last_busy_end_s), "share": float(i.share),
              **({"device": int(i.device)} if getattr(i, "device", 0) else {})}
             for i in instances]
    start = min([0.0] + [s["start_s"] for s in spans])
    end = max([_round(end_s), start] + [s["end_s"] for s in spans])
    return {"sharing": sharing, "devices": int(devices), "time_compression": float(time_compression),
            "span_start_s": start, "span_end_s": end, "instances": len(spans), "spans": spans}


def _compressed(time_compression: float) -> bool:
    return time_compression > 1.0 + 1e-9


def _monthly_note(time_compression: float) -> str | None:
    if not _compressed(time_compression):
        return None
    return f"replayed {time_compression:g} times faster: use a simulated run for a month's cost"


def _figures(inputs: dict, price: PriceSpec | None, completed: int, good: int) -> dict:
    c = float(inputs["time_compression"])
    out = {**dict.fromkeys(_FIGURE_KEYS), "monthly_note": _monthly_note(c), "price": price_dict(price)}
    if price is None:
        return out
    spans = inputs["spans"]
    billed = [_billed_s(s["start_s"], s["end_s"], s["last_busy_end_s"], price) for s in spans]
    intervals = [(s["start_s"], s["start_s"] + b) for s, b in zip(spans, billed, strict=True)]
    dev_s = _device_seconds_per_device(intervals, [s["share"] for s in spans], [s.get("device", 0) for s in spans],
                                       inputs["sharing"])
    serverless = dev_s * price.serverless_usd_per_s
    span_s = float(inputs["span_end_s"]) - float(inputs["span_start_s"])
    devices = int(inputs["devices"])
    provisioned = devices * span_s / 3600.0 * price.on_demand_usd_per_h
    out.update({
        "serverless_usd": float(serverless),
        "provisioned_usd": float(provisioned),
        "billed_instance_s": float(sum(billed)),
        "billed_device_s": float(dev_s),
        "serverless_per_1k_usd": _per_1k(serverless, completed),
        "provisioned_per_1k_usd": _per_1k(provisioned, completed),
        "serverless_per_1k_good_usd": _per_1k(serverless, good),
        "provisioned_per_1k_good_usd": _per_1k(provisioned, good),
    })
    if not _compressed(c) and span_s > 0:
        out["monthly_serverless_usd"] = float(serverless * SECONDS_PER_MONTH / span_s)
        out["monthly_provisioned_usd"] = float(devices * price.on_demand_usd_per_h * HOURS_PER_MONTH)
    return out


def _stored(inputs: dict) -> dict:
    stored = {k: inputs[k] for k in _INPUT_KEYS}
    if stored["spans"] is not None and len(stored["spans"]) > MAX_STORED_SPANS:
        stored["spans"] = None
    return stored


def reprice(cost_inputs: dict, price: PriceSpec | None, completed: int, good: int) -> dict:
    """The cost dict trial_cost would have given with this price, from a stored cost dict (a trial summary's
    "cost": its spans, span and sharing mode) and the trial's completed / good request counts.

    Raises ValueError if the spans were not stored (more than MAX_STORED_SPANS instances)."""
    missing = [k for k in _INPUT_KEYS if k not in cost_inputs]
    if missing:
        raise ValueError(f"not a stored cost: missing {', '.join(missing)}")
    if cost_inputs["spans"] is None:
        raise ValueError(f"this trial had {cost_inputs['instances']} instances, more than the "
                         f"{MAX_STORED_SPANS} whose spans are stored; it cannot be repriced")
    return {**_stored(cost_inputs), **_figures(cost_inputs, price, completed, good)}


def trial_cost(*, instances: Sequence[InstanceLife], price: PriceSpec | None, end_s: float, devices: int,
               completed: int, good: int, sharing: str, time_compression: float) -> dict:
    """Serverless and provisioned cost of one trial, per 1,000 requests, and (uncompressed runs) per month.

    end_s: end of the drain on the run clock; completed: requests with outcome ok; good: ok and within the
    SLO latency; sharing: the variant's sharing mode; time_compression: the workload's replay speed-up
    (the largest, with several workloads). Besides the figures the dict holds the billing inputs (spans,
    span_start_s, span_end_s, sharing, devices, time_compression, instances) that reprice reads."""
    inputs = cost_inputs(instances, end_s=end_s, devices=devices, sharing=sharing, time_compression=time_compression)
    return {**_stored(inputs), **_figures(inputs, price, completed, good)}


def cost_so_far_usd(instances: Sequence[InstanceLife], price: PriceSpec | None, now_s: float, *,
                    sharing: str) -> float | None:
    """Serverless cost accrued up to now_s, unrounded, for live windows, by the final bill's rules.

    Same starts (prestarts from their negative start times) and the same device shares as trial_cost.
    An instance still alive (evicted False) accrues up to now_s; an evicted one up to the later of its
    eviction and its idle tail, capped at now_s. Minimum billed time and granularity are applied only
    in the final bill, so the live figure rises smoothly.
    """
    _check_sharing(sharing)
    if price is None:
        return None
    intervals = []
    for inst in instances:
        end = _billed_end_s(inst.end_s, inst.last_busy_end_s, price) if inst.evicted else now_s
        intervals.append((inst.start_s, max(inst.start_s, min(end, now_s))))
    dev_s = _device_seconds_per_device(intervals, [i.share for i in instances],
                                       [getattr(i, "device", 0) for i in instances], sharing)
    return float(dev_s * price.serverless_usd_per_s)


def _device_seconds_per_device(intervals, shares, devices, sharing: str) -> float:
    """Total device-seconds, time-slicing counted per device (a simulated fleet has several)."""
    if len(set(devices)) <= 1:
        return float(sum(device_seconds(intervals, shares, sharing)))
    total = 0.0
    for d in set(devices):
        pick = [k for k, dv in enumerate(devices) if dv == d]
        total += sum(device_seconds([intervals[k] for k in pick], [shares[k] for k in pick], sharing))
    return float(total)
