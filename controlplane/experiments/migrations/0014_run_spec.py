"""A run's frozen spec is stored once (RunSpec), not on every trial; each trial keeps its run time, expected
requests and Celery time limit on its row. Existing trials get one RunSpec per distinct spec of their experiment."""

import hashlib
import json

import django.db.models.deletion
from django.db import migrations, models

from workers import spec as S

TRIAL_TIME_MARGIN_S = 900.0  # services.TRIAL_TIME_MARGIN_S when this migration was written


def _figures(data, uploaded) -> tuple[float, float]:
    """(run_s, expected_requests) of a frozen spec dict, as Run now records them."""
    try:
        exp = S.parse_experiment(data, uploaded_models=uploaded)
    except S.SpecError:
        # Stored before a stricter validator: the run time from the workloads as written, no request count.
        workloads = [w for w in [data.get("workload"), *(data.get("workloads") or [])] if isinstance(w, dict)]
        run_s = max((float(w.get("duration_s") or 0) / float(w.get("time_compression") or 1) for w in workloads),
                    default=0.0)
        return run_s, 0.0
    return S.trial_run_s(exp), S.trial_requests(exp)


def store_run_specs(apps, schema_editor):
    Trial = apps.get_model("experiments", "Trial")
    RunSpec = apps.get_model("experiments", "RunSpec")
    Model = apps.get_model("registry", "Model")
    found: dict[tuple[int, str], tuple[int, float, float]] = {}
    uploaded: dict[int, dict] = {}
    for trial in (Trial.objects.select_related("experiment").only("id", "spec", "experiment__owner_id")
                  .order_by("id").iterator(chunk_size=20)):
        data = trial.spec or {}
        raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("ascii")
        key = (trial.experiment_id, hashlib.sha256(raw).hexdigest())
        if key not in found:
            owner = trial.experiment.owner_id
            if owner not in uploaded:
                uploaded[owner] = {m.name: S.UploadedModel(name=m.name, dynamic_batch=m.dynamic_batch)
                                   for m in Model.objects.filter(owner_id=owner)}
            run_s, requests = _figures(data, uploaded[owner])
            row = RunSpec.objects.create(experiment_id=key[0], sha256=key[1], size_bytes=len(raw), spec=data)
            found[key] = (row.id, run_s, requests)
        run_spec_id, run_s, requests = found[key]
        Trial.objects.filter(pk=trial.pk).update(run_spec_id=run_spec_id, run_s=run_s, expected_requests=requests,
                                                 time_limit_s=run_s + TRIAL_TIME_MARGIN_S)
    if schema_editor.connection.vendor == "postgresql":
        # The columns become NOT NULL next, in the same transaction: no deferred checks may be pending then.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def restore_trial_specs(apps, schema_editor):
    Trial = apps.get_model("experiments", "Trial")
    RunSpec = apps.get_model("experiments", "RunSpec")
    for run_spec in RunSpec.objects.order_by("id").iterator(chunk_size=20):
        Trial.objects.filter(run_spec_id=run_spec.id).update(spec=run_spec.spec)


class Migration(migrations.Migration):

    dependencies = [
        ('experiments', '0013_capacity_search'),
        ('registry', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='RunSpec',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('sha256', models.CharField(help_text='of the canonical JSON (sorted keys, compact)', max_length=64)),
                ('size_bytes', models.PositiveBigIntegerField(help_text='length of the canonical JSON')),
                ('spec', models.JSONField(help_text='experiment spec dict frozen at enqueue time')),
                ('created', models.DateTimeField(auto_now_add=True)),
                ('experiment', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='run_specs', to='experiments.experiment')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('experiment', 'sha256'), name='run_spec_unique_per_experiment')],
            },
        ),
        migrations.AddField(
            model_name='trial',
            name='run_spec',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.CASCADE, related_name='trials', to='experiments.runspec'),
        ),
        migrations.AddField(
            model_name='trial',
            name='run_s',
            field=models.FloatField(help_text="wall-clock seconds of workload (the longest workload's run time)", null=True),
        ),
        migrations.AddField(
            model_name='trial',
            name='expected_requests',
            field=models.FloatField(help_text='about how many arrivals, over all workloads (what MAX_REQUESTS caps)', null=True),
        ),
        migrations.AddField(
            model_name='trial',
            name='time_limit_s',
            field=models.FloatField(help_text='the Celery soft time limit it is sent with (hard: 120 s more)', null=True),
        ),
        migrations.AlterField(
            model_name='trial',
            name='spec',
            field=models.JSONField(help_text='experiment spec dict frozen at enqueue time', null=True),
        ),
        migrations.RunPython(store_run_specs, restore_trial_specs),
        migrations.AlterField(
            model_name='trial',
            name='run_spec',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='trials', to='experiments.runspec'),
        ),
        migrations.AlterField(
            model_name='trial',
            name='run_s',
            field=models.FloatField(help_text="wall-clock seconds of workload (the longest workload's run time)"),
        ),
        migrations.AlterField(
            model_name='trial',
            name='expected_requests',
            field=models.FloatField(help_text='about how many arrivals, over all workloads (what MAX_REQUESTS caps)'),
        ),
        migrations.AlterField(
            model_name='trial',
            name='time_limit_s',
            field=models.FloatField(help_text='the Celery soft time limit it is sent with (hard: 120 s more)'),
        ),
        migrations.RemoveField(
            model_name='trial',
            name='spec',
        ),
    ]
