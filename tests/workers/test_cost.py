"""Serverless billing rules (granularity, idle tail, minimum, share), provisioned cost over the same span,
time compression, stored spans and repricing, and the trial page's cost rows."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from workers.cost import (
    MAX_STORED_SPANS,
    billed_seconds,
    cost_so_far_usd,
    device_seconds,
    reprice,
    trial_cost,
)
from workers.engine import run_trial
from workers.records import InstanceLife, json_safe
from workers.spec import PriceSpec, TrialSpec, parse_experiment

PRICE = PriceSpec(name="gpu-x", on_demand_usd_per_h=3.6, serverless_usd_per_s=0.001, granularity_s=1.0,
                  min_billed_s=0.0, idle_tail_s=0.0)
# $/s such that an always-on instance costs about $3,007 a month.
ALWAYS_ON = PriceSpec(name="gpu-y", on_demand_usd_per_h=4.176, serverless_usd_per_s=0.00116)


def inst(start, end, last_busy=None, share=1.0, evicted=True, busy=0.0, i=0):
    return InstanceLife(function=0, instance=i, share=share, start_s=start, end_s=end,
                        last_busy_end_s=start if last_busy is None else last_busy, busy_s=busy, evicted=evicted)


def cost(instances, price=PRICE, end_s=100.0, devices=1, completed=1000, good=800, sharing="exclusive",
         time_compression=1.0):
    return trial_cost(instances=instances, price=price, end_s=end_s, devices=devices, completed=completed,
                      good=good, sharing=sharing, time_compression=time_compression)


def roundtrip(d: dict) -> dict:
    """What a summary reads back from the database."""
    return json.loads(json.dumps(json_safe(d), allow_nan=False))


# ---- per-instance billing rules ---------------------------------------------------------------------
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


def test_longer_keep_alive_bills_more():
    short = cost([inst(0.0, 12.0, last_busy=2.0)])
    long = cost([inst(0.0, 62.0, last_busy=2.0)])
    assert long["serverless_usd"] > short["serverless_usd"]
    assert long["provisioned_usd"] == short["provisioned_usd"]


# ---- device shares ------------------------------------------------------------------------------------
def test_spatial_share_scales_serverless_cost():
    full = cost([inst(0.0, 10.0)])
    half = cost([inst(0.0, 10.0, share=0.5)], sharing="spatial")
    assert full["serverless_usd"] == pytest.approx(0.01)
    assert half["serverless_usd"] == pytest.approx(0.005)
    assert half["billed_instance_s"] == full["billed_instance_s"] == 10.0
    assert half["billed_device_s"] == pytest.approx(5.0)
    # Four quarter slices side by side fill one device.
    quarters = cost([inst(0.0, 100.0, share=0.25, i=k) for k in range(4)], sharing="spatial")
    assert quarters["serverless_usd"] == pytest.approx(cost([inst(0.0, 100.0)])["serverless_usd"])


def test_time_sliced_instances_on_one_device_cost_one_device():
    # Measured on the old code: 4 time-sliced instances alive for 100 s were billed $0.464, four devices,
    # while the one device they shared is $0.116 provisioned for the same 100 s.
    four = [inst(0.0, 100.0, i=k) for k in range(4)]
    c = cost(four, price=ALWAYS_ON, sharing="time_slice")
    one = cost([inst(0.0, 100.0)], price=ALWAYS_ON)
    assert c["serverless_usd"] == pytest.approx(one["serverless_usd"]) == pytest.approx(0.116)
    assert c["serverless_usd"] == pytest.approx(c["provisioned_usd"])
    assert c["billed_instance_s"] == 400.0 and c["billed_device_s"] == pytest.approx(100.0)
    # The same lives under exclusive sharing (one device each) are four devices.
    assert cost(four, price=ALWAYS_ON)["serverless_usd"] == pytest.approx(0.464)


def test_time_slice_bills_the_union_split_between_instances_alive():
    a, b = inst(0.0, 10.0), inst(5.0, 20.0, i=1)
    # a alone 0-5, both 5-10 (half each), b alone 10-20: 7.5 and 12.5 device-seconds, 20 in all.
    assert device_seconds([(0.0, 10.0), (5.0, 20.0)], [1.0, 1.0], "time_slice") == pytest.approx([7.5, 12.5])
    c = cost([a, b], sharing="time_slice")
    assert c["billed_device_s"] == pytest.approx(20.0) and c["serverless_usd"] == pytest.approx(0.02)
    # Apart, they are billed in full.
    apart = cost([inst(0.0, 10.0), inst(30.0, 45.0, i=1)], sharing="time_slice")
    assert apart["billed_device_s"] == pytest.approx(25.0)


def test_time_slice_applies_tail_minimum_and_granularity_per_instance_before_sharing():
    price = PriceSpec("p", 3.6, 0.001, granularity_s=10.0, idle_tail_s=4.0, min_billed_s=0.0)
    # a: 0-3, last busy 2 -> until 6 -> 10 s billed: [0, 10]. b: 8-9 -> 1 s -> 10 s billed: [8, 18].
    c = cost([inst(0.0, 3.0, last_busy=2.0), inst(8.0, 9.0, i=1)], price=price, sharing="time_slice")
    assert c["billed_instance_s"] == 20.0
    assert c["billed_device_s"] == pytest.approx(18.0)


def test_unknown_sharing_mode_is_refused():
    with pytest.raises(ValueError, match="sharing"):
        cost([inst(0.0, 1.0)], sharing="shared")


# ---- one billing span --------------------------------------------------------------------------------
def test_provisioned_and_per_1k_figures():
    c = cost([inst(0.0, 10.0), inst(5.0, 20.0, i=1)], end_s=100.0, devices=2, completed=1000, good=800)
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


def test_provisioned_covers_prestart_and_drain_like_serverless():
    # A min instance started 3 s before the load; the load's window is 10 s, the drain ended at 12 s.
    # The old code billed provisioned for run_s = 10 s only, serverless for all 15 s.
    always_on = inst(-3.0, 12.0, last_busy=11.5, evicted=False)
    c = cost([always_on], end_s=12.0)
    assert (c["span_start_s"], c["span_end_s"]) == (-3.0, 12.0)
    assert c["provisioned_usd"] == pytest.approx(15.0 / 3600 * 3.6)
    # One always-on instance on one device: serverless and provisioned bill the same device-seconds.
    assert c["billed_device_s"] == pytest.approx(15.0)
    assert c["serverless_usd"] == pytest.approx(15.0 * 0.001)


def test_span_starts_no_later_than_the_load_and_ends_with_the_drain():
    c = cost([inst(0.4, 5.0)], end_s=9.0)  # no prestart: the first instance woke for the first request
    assert (c["span_start_s"], c["span_end_s"]) == (0.0, 9.0)
    assert c["provisioned_usd"] == pytest.approx(9.0 / 3600 * 3.6)
    assert cost([], end_s=9.0)["provisioned_usd"] == pytest.approx(9.0 / 3600 * 3.6)


# ---- one time axis ---------------------------------------------------------------------------------------
def test_compressed_run_gives_no_monthly_projection():
    # One hour of workload replayed 100x faster: a 36 s run with one always-on instance. The old code scaled the
    # 36 s of billing to the hour it represented and projected $30.07 a month, 100x less than the $3,006.72 the
    # same always-on instance costs in a month of wall time.
    compressed = cost([inst(0.0, 36.0, evicted=False)], price=ALWAYS_ON, end_s=36.0, time_compression=100.0)
    assert compressed["time_compression"] == 100.0
    assert compressed["monthly_serverless_usd"] is None and compressed["monthly_provisioned_usd"] is None
    assert compressed["monthly_note"] == "replayed 100 times faster: use a simulated run for a month's cost"
    # The per-run and per-1k figures stay: wall-clock billing of the replay as it ran.
    assert compressed["serverless_usd"] == pytest.approx(36.0 * 0.00116)
    assert compressed["provisioned_usd"] == pytest.approx(36.0 / 3600 * 4.176)
    assert compressed["serverless_per_1k_usd"] is not None

    real_time = cost([inst(0.0, 3600.0, evicted=False)], price=ALWAYS_ON, end_s=3600.0)
    assert real_time["time_compression"] == 1.0 and real_time["monthly_note"] is None
    assert real_time["monthly_serverless_usd"] == pytest.approx(3006.72)
    assert real_time["monthly_provisioned_usd"] == pytest.approx(3006.72)


def test_monthly_serverless_scales_the_billed_span_to_30_days():
    # 10 s billed over a 100 s span (prestart at -20 s, drain to 80 s): 1 % of the time, 1 % of a month.
    c = cost([inst(-20.0, -10.0)], end_s=80.0)
    assert c["monthly_serverless_usd"] == pytest.approx(0.01 * 30 * 86_400 / 100.0)
    assert c["monthly_provisioned_usd"] == pytest.approx(3.6 * 720)
    assert c["monthly_provisioned_usd"] == pytest.approx(c["provisioned_usd"] * 30 * 86_400 / 100.0)


def test_per_1k_none_when_nothing_completed():
    c = cost([inst(0.0, 10.0)], completed=0, good=0)
    assert c["serverless_per_1k_usd"] is None and c["provisioned_per_1k_good_usd"] is None
    assert c["serverless_usd"] == pytest.approx(0.01)


def test_no_price_gives_no_figures_but_keeps_what_repricing_needs():
    c = cost([inst(0.0, 10.0)], price=None, time_compression=5.0)
    assert c["price"] is None
    for key in ("serverless_usd", "provisioned_usd", "billed_instance_s", "serverless_per_1k_usd",
                "monthly_serverless_usd", "monthly_provisioned_usd"):
        assert c[key] is None, key
    assert c["time_compression"] == 5.0 and c["spans"] and c["sharing"] == "exclusive"
    assert reprice(roundtrip(c), PRICE, 1000, 800)["serverless_usd"] == pytest.approx(0.01)
    assert cost_so_far_usd([inst(0.0, 10.0)], None, 5.0, sharing="exclusive") is None


# ---- stored spans and repricing ---------------------------------------------------------------------------
def _mixed_lives():
    return [inst(-2.5, 14.25, last_busy=13.1, evicted=False, i=0),
            inst(1.0, 3.333333333, last_busy=2.0, i=1),
            inst(2.5, 9.75, last_busy=9.0, i=2),
            InstanceLife(function=1, instance=3, share=1.0, start_s=4.0, end_s=14.25, last_busy_end_s=12.0,
                         busy_s=3.0, evicted=False)]


@pytest.mark.parametrize("sharing", ["exclusive", "time_slice", "spatial"])
def test_reprice_gives_exactly_what_trial_cost_gives(sharing):
    lives = _mixed_lives()
    if sharing == "spatial":
        for life in lives:
            life.share = 0.25
    other = PriceSpec("other", 12.0, 0.0042, granularity_s=0.1, idle_tail_s=2.0, min_billed_s=1.0)
    for c_ in (1.0, 10.0):
        stored = roundtrip(cost(lives, end_s=14.25, sharing=sharing, time_compression=c_))
        assert stored["spans"][0] == {"function": 0, "instance": 0, "start_s": -2.5, "end_s": 14.25,
                                      "last_busy_end_s": 13.1, "share": lives[0].share}
        assert stored["sharing"] == sharing and stored["instances"] == 4
        assert reprice(stored, PRICE, 1000, 800) == stored
        again = cost(lives, price=other, end_s=14.25, completed=700, good=650, sharing=sharing, time_compression=c_)
        assert reprice(stored, other, 700, 650) == again


def test_stored_spans_are_capped():
    many = [inst(k * 0.5, k * 0.5 + 0.2, i=k) for k in range(MAX_STORED_SPANS + 1)]
    c = cost(many, end_s=MAX_STORED_SPANS * 0.5 + 1.0)
    assert c["spans"] is None and c["instances"] == MAX_STORED_SPANS + 1
    assert c["billed_instance_s"] == pytest.approx(MAX_STORED_SPANS + 1)  # every instance still billed
    with pytest.raises(ValueError, match="cannot be repriced"):
        reprice(c, PRICE, 1, 1)
    assert len(cost(many[:MAX_STORED_SPANS])["spans"]) == MAX_STORED_SPANS
    assert len(json.dumps(cost(many[:MAX_STORED_SPANS]))) < 150_000


# ---- live figure ----------------------------------------------------------------------------------------
def test_cost_so_far():
    tail = PriceSpec("t", 1.0, 0.001, granularity_s=60.0, idle_tail_s=5.0)
    alive = inst(2.0, 2.0, evicted=False)
    gone = inst(0.0, 4.0, last_busy=3.0)  # billed until 8 s (tail)
    assert cost_so_far_usd([alive, gone], tail, 6.0, sharing="exclusive") == pytest.approx((4.0 + 6.0) * 0.001)
    assert cost_so_far_usd([alive, gone], tail, 20.0, sharing="exclusive") == pytest.approx((18.0 + 8.0) * 0.001)
    assert cost_so_far_usd([inst(30.0, 40.0)], tail, 20.0, sharing="exclusive") == 0.0  # not started yet
    quarter = [inst(0.0, 10.0, share=0.25, evicted=False)]
    assert cost_so_far_usd(quarter, tail, 10.0, sharing="spatial") == pytest.approx(0.0025)
    # Time-sliced: two alive on one device accrue one device.
    pair = [inst(-1.0, 0.0, evicted=False), inst(0.0, 0.0, evicted=False, i=1)]
    assert cost_so_far_usd(pair, tail, 9.0, sharing="time_slice") == pytest.approx(10.0 * 0.001)


@pytest.mark.parametrize("sharing", ["exclusive", "time_slice", "spatial"])
def test_cost_so_far_at_the_end_is_the_final_bill_without_rounding(sharing):
    # No minimum and no granularity (the live figure leaves them out); the idle tails end before the run does.
    exact = PriceSpec("exact", 3.6, 0.001, granularity_s=0.0, idle_tail_s=1.5, min_billed_s=0.0)
    share = 0.5 if sharing == "spatial" else 1.0
    lives = [inst(-2.5, 14.25, last_busy=12.0, evicted=False, share=share, i=0),  # a prestart
             inst(1.0, 3.333333333, last_busy=2.0, share=share, i=1),  # billed to 3.5 s (tail)
             inst(2.5, 9.75, last_busy=9.0, share=share, i=2),  # billed to 10.5 s (tail)
             InstanceLife(function=1, instance=3, share=share, start_s=4.0, end_s=14.25, last_busy_end_s=12.0,
                          busy_s=3.0, evicted=False)]
    final = cost(lives, price=exact, end_s=14.25, sharing=sharing)
    assert cost_so_far_usd(lives, exact, 14.25, sharing=sharing) == pytest.approx(final["serverless_usd"], rel=1e-9)
    assert cost_so_far_usd(lives, exact, -1.0, sharing=sharing) == pytest.approx(1.5 * 0.001 * share)  # prestart


# ---- a real trial -----------------------------------------------------------------------------------------
def test_a_compressed_time_sliced_trial_records_its_compression_and_reprices(tmp_path):
    exp = parse_experiment({
        "name": "t", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 100},
        "functions": [{"name": "f", "model": "null"}],
        "workload": {"pattern": "poisson", "rate_rps": 20, "duration_s": 10, "time_compression": 10, "seed": 4},
        "variants": [{"name": "v", "sharing": "time_slice", "min_instances": 2, "max_instances": 2}],
    })
    spec = TrialSpec(exp, exp.variants[0], price=ALWAYS_ON)
    result = run_trial(spec, model_dir=tmp_path)
    c = roundtrip(result.summary["cost"])
    assert c["time_compression"] == 10.0 and c["sharing"] == "time_slice"
    assert c["monthly_serverless_usd"] is None and c["monthly_provisioned_usd"] is None
    assert c["monthly_note"].startswith("replayed 10 times faster")
    assert c["instances"] == 2 and len(c["spans"]) == 2 and c["span_start_s"] < 0  # two prestarts
    # Two min instances time-sliced on one device for the whole span: one device, as provisioned.
    assert c["billed_device_s"] == pytest.approx(c["span_end_s"] - c["span_start_s"], abs=1.5)
    good = round(c["serverless_usd"] / c["serverless_per_1k_good_usd"] * 1000.0)  # the summary keeps no count
    assert reprice(c, ALWAYS_ON, result.summary["completed"], good) == c
    assert result.windows[-1]["cost_usd"] == pytest.approx(
        c["billed_device_s"] * ALWAYS_ON.serverless_usd_per_s, abs=2 * ALWAYS_ON.serverless_usd_per_s)


# ---- the trial page -------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_trial_page_says_why_a_compressed_run_has_no_monthly_figure(client, user, queued_trials):
    compressed, real_time = queued_trials[0], queued_trials[1]
    compressed.summary = roundtrip({"cost": cost([inst(0.0, 36.0)], price=ALWAYS_ON, end_s=36.0,
                                                 time_compression=100.0)})
    real_time.summary = roundtrip({"cost": cost([inst(0.0, 3600.0)], price=ALWAYS_ON, end_s=3600.0)})
    compressed.save()
    real_time.save()
    client.force_login(user)
    html = client.get(reverse("trial-detail", kwargs={"code": compressed.code})).content.decode()
    assert "replayed 100× faster — no monthly figure" in html
    html = client.get(reverse("trial-detail", kwargs={"code": real_time.code})).content.decode()
    assert "no monthly figure" not in html and "$3,007" in html  # $3,006.72 with three significant figures
