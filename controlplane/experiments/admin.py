from django.contrib import admin

from . import models


@admin.register(models.PriceEntry)
class PriceEntryAdmin(admin.ModelAdmin):
    list_display = ("name", "accelerator", "on_demand_usd_per_h", "serverless_usd_per_s", "granularity_s",
                    "idle_tail_s", "as_of", "source")


class FunctionInline(admin.TabularInline):
    model = models.Function
    extra = 0


class VariantInline(admin.TabularInline):
    model = models.Variant
    extra = 0


@admin.register(models.Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "device", "accelerator", "updated")
    inlines = [FunctionInline, VariantInline]


@admin.register(models.Trial)
class TrialAdmin(admin.ModelAdmin):
    list_display = ("experiment", "variant_name", "run_number", "repeat", "status", "device", "started_at")
    list_filter = ("status",)
    raw_id_fields = ("run_spec",)  # a select of every frozen spec would load them all
