"""Seed the price catalogue with dated public prices (editable later in the admin)."""

import datetime

from django.db import migrations

PRICES = [
    dict(name="H100-80GB", accelerator="NVIDIA H100 80GB", memory_gb=80, on_demand_usd_per_h=6.88,
         serverless_usd_per_s=0.00116, granularity_s=1, min_billed_s=0, idle_tail_s=5,
         as_of=datetime.date(2026, 11, 1),
         source="On demand: AWS p5 per GPU-hour (Nov 2026). Serverless: RunPod flex per second, billed from "
                "wake-up, rounded up to the second, 5 s idle tail."),
    dict(name="H100-80GB-Modal", accelerator="NVIDIA H100 80GB", memory_gb=80, on_demand_usd_per_h=6.88,
         serverless_usd_per_s=0.001097, granularity_s=1, min_billed_s=0, idle_tail_s=0,
         as_of=datetime.date(2026, 11, 1),
         source="Serverless: Modal H100 per second. On demand: AWS p5 per GPU-hour (Nov 2026) for comparison."),
    dict(name="A100-80GB", accelerator="NVIDIA A100 80GB", memory_gb=80, on_demand_usd_per_h=3.43,
         serverless_usd_per_s=0.00076, granularity_s=1, min_billed_s=0, idle_tail_s=5,
         as_of=datetime.date(2026, 11, 1),
         source="On demand: AWS p4de per GPU-hour. Serverless: RunPod flex per second, 5 s idle tail."),
    dict(name="A100-40GB", accelerator="NVIDIA A100 40GB", memory_gb=40, on_demand_usd_per_h=2.74,
         serverless_usd_per_s=0.00076, granularity_s=1, min_billed_s=0, idle_tail_s=5,
         as_of=datetime.date(2026, 11, 1),
         source="On demand: AWS p4d per GPU-hour. Serverless: no public 40GB flex price found; the RunPod A100 "
                "80GB flex price is used as an upper bound."),
    dict(name="L4-24GB", accelerator="NVIDIA L4 24GB", memory_gb=24, on_demand_usd_per_h=0.00013 * 3600,
         serverless_usd_per_s=0.00019, granularity_s=1, min_billed_s=0, idle_tail_s=5,
         as_of=datetime.date(2026, 11, 1),
         source="Serverless: RunPod flex L4 per second. Provisioned: RunPod always-on L4 ($0.00013/s) per hour."),
    dict(name="cpu", accelerator="CPU (2 GB function)", memory_gb=2, on_demand_usd_per_h=0.0000333334 * 3600,
         serverless_usd_per_s=0.0000333334, granularity_s=0.001, min_billed_s=0, idle_tail_s=0,
         as_of=datetime.date(2026, 11, 1),
         source="AWS Lambda: $0.0000166667 per GB-second x 2 GB, billed per millisecond (request fee of $0.20 "
                "per million not included). Provisioned: the same rate held for an hour."),
]


def seed(apps, schema_editor):
    PriceEntry = apps.get_model("experiments", "PriceEntry")
    for row in PRICES:
        PriceEntry.objects.update_or_create(name=row["name"], defaults=row)


def unseed(apps, schema_editor):
    apps.get_model("experiments", "PriceEntry").objects.filter(name__in=[p["name"] for p in PRICES]).delete()


class Migration(migrations.Migration):
    dependencies = [("experiments", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
