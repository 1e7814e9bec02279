"""Serverless billing rules (granularity, idle tail, minimum, share) and provisioned cost."""

from __future__ import annotations

import json

import pytest

from workers.cost import billed_seconds, cost_so_far_usd, trial_cost
from workers.records import InstanceLife
from workers.spec import PriceSpec

PRICE = PriceSpec(name="gpu-x", on_demand_usd_per_h=3.6, serverless_usd_per_s=0.001, granularity_s=1.0,
                  min_billed_s=0.0, idle_tail_s=0.0)


def inst(start, end, last_busy=None, share=1.0, evicted=True, busy=0.0, i=0):
    return InstanceLife(function=0, instance=i, share=share, start_s=start, end_s=end,
                        last_busy_end_s=start if last_busy is None else last_busy, busy_s=busy, evicted=evicted)


def cost(instances, price=PRICE, run_s=100.0, devices=1, completed=1000, good=800, workload_duration_s=100.0):
    return trial_cost(instances=instances, price=price, run_s=run_s, devices=devices, completed=completed,
                      good=good, workload_duration_s=workload_duration_s)


def test_granularity_rounds_up():
    assert billed_seconds(inst(0.0, 2.2), PRICE) == 3.0
    assert billed_seconds(inst(0.0, 2.0000000001), PRICE) == 2.0  # float noise is not a whole extra second
    coarse = PriceSpec("c", 1.0, 0.001, granularity_s=60.0)
    assert billed_seconds(inst(0.0, 61.0), coarse) == 120.0
    fine = PriceSpec("f", 1.0, 0.001, granularity_s=0.001)
    assert billed_seconds(inst(0.0, 2.2), fine) == pytest.approx(2.2)


def test_idle_tail_extends_billing_past_eviction():
    tail = PriceSpec("t", 1.0, 0.001, granularity_s=1.0, idle_tail_s=10.0)
    # Evicted at 5 s, last busy until 3 s: billed until 13 s.
    assert billed_seconds(inst(0.0, 5.0, last_busy=3.0), tail) == 13.0
    # Kept alive longer than the tail: the eviction time wins.
    assert billed_seconds(inst(0.0, 30.0, last_busy=3.0), tail) == 30.0


def test_minimum_billed():
    minimum = PriceSpec("m", 1.0, 0.001, granularity_s=1.0, min_billed_s=60.0)
    assert billed_seconds(inst(0.0, 2.0), minimum) == 60.0
    assert billed_seconds(inst(0.0, 75.5), minimum) == 76.0


def test_billing_starts_at_wake_up_including_prestarts():
    assert billed_seconds(inst(-3.0, 7.0), PRICE) == 10.0


def test_share_scales_serverless_cost():
    full = cost([inst(0.0, 10.0)])
    half = cost([inst(0.0, 10.0, share=0.5)])
    assert full["serverless_usd"] == pytest.approx(0.01)
    assert half["serverless_usd"] == pytest.approx(0.005)
    assert half["billed_instance_s"] == full["billed_instance_s"] == 10.0


def test_provisioned_and_per_1k_figures():
    c = cost([inst(0.0, 10.0), inst(5.0, 20.0, i=1)], run_s=100.0, devices=2, completed=1000, good=800)
    assert c["billed_instance_s"] == 25.0
    assert c["serverless_usd"] == pytest.approx(0.025)
    assert c["provisioned_usd"] == pytest.approx(2 * 100 / 3600 * 3.6)
    assert c["serverless_per_1k_usd"] == pytest.approx(0.025)
    assert c["serverless_per_1k_good_usd"] == pytest.approx(0.025 / 0.8)
    assert c["provisioned_per_1k_usd"] == pytest.approx(0.2)
    assert c["provisioned_per_1k_good_usd"] == pytest.approx(0.25)
    assert c["monthly_provisioned_usd"] == pytest.approx(2 * 3.6 * 720)
    assert c["price"] == {"name": "gpu-x", "on_demand_usd_per_h": 3.6, "serverless_usd_per_s": 0.001,
                          "granularity_s": 1.0, "idle_tail_s": 0.0, "min_billed_s": 0.0}
    json.dumps(c, allow_nan=False)


def test_monthly_serverless_scales_from_uncompressed_workload_time():
    # A 1-hour workload compressed into 100 s of run: the month holds 720 such hours.
    c = cost([inst(0.0, 10.0)], run_s=100.0, workload_duration_s=3600.0)
    assert c["monthly_serverless_usd"] == pytest.approx(0.01 * 720)


def test_per_1k_none_when_nothing_completed():
    c = cost([inst(0.0, 10.0)], completed=0, good=0)
    assert c["serverless_per_1k_usd"] is None and c["provisioned_per_1k_good_usd"] is None
    assert c["serverless_usd"] == pytest.approx(0.01)


def test_longer_keep_alive_bills_more():
    short = cost([inst(0.0, 12.0, last_busy=2.0)])
    long = cost([inst(0.0, 62.0, last_busy=2.0)])
    assert long["serverless_usd"] > short["serverless_usd"]
    assert long["provisioned_usd"] == short["provisioned_usd"]


def test_no_price_gives_none_everywhere():
    c = cost([inst(0.0, 10.0)], price=None)
    assert c["price"] is None
    assert all(v is None for v in c.values())
    assert cost_so_far_usd([inst(0.0, 10.0)], None, 5.0) is None


def test_cost_so_far():
    tail = PriceSpec("t", 1.0, 0.001, granularity_s=60.0, idle_tail_s=5.0)
    alive = inst(2.0, 2.0, evicted=False)
    gone = inst(0.0, 4.0, last_busy=3.0)  # billed until 8 s (tail)
    assert cost_so_far_usd([alive, gone], tail, 6.0) == pytest.approx((4.0 + 6.0) * 0.001)
    assert cost_so_far_usd([alive, gone], tail, 20.0) == pytest.approx((18.0 + 8.0) * 0.001)
    assert cost_so_far_usd([inst(30.0, 40.0)], tail, 20.0) == 0.0  # not started yet
    assert cost_so_far_usd([inst(0.0, 10.0, share=0.25, evicted=False)], tail, 10.0) == pytest.approx(0.0025)
