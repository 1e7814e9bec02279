"""One set of defaults and bounds: `workers.spec.FIELD_RULES`.

Every place that states a default or a bound of the spec is held to that table here: the spec dataclasses,
the parsers (a section given empty), the browser editor's starting values, the API's document serializers
and the OpenAPI schema made from them, the database's field defaults and constraints, and the numbers
written in docs/spec.md. An experiment made in the editor, read from a file or posted to the API therefore
runs the same.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from workers import spec as S

ROOT = Path(__file__).resolve().parents[2]
SPEC_DOC = (ROOT / "docs" / "spec.md").read_text()
METHOD_DOC = (ROOT / "docs" / "method.md").read_text()
RULES = S.FIELD_RULES
WITH_DEFAULT = {k for k, r in RULES.items() if not r.required}


def same(a, b) -> bool:
    """Equal values, whatever their number type (the editor shows 60.0 as 60)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def test_the_table_is_consistent_with_itself():
    for key, r in RULES.items():
        if r.choices:
            assert r.required or r.default is None or r.default in r.choices, key  # None: not set
        elif r.low is not None and r.default not in (None, S.REQUIRED):
            low_ok = r.default > r.low if r.low_open else r.default >= r.low
            assert low_ok and r.default <= r.high, key
        if r.integer and not r.required:
            assert isinstance(r.default, int), key
    assert S.DEFAULTS == {k: r.default for k, r in RULES.items() if not r.required}


# ---- the dataclasses -------------------------------------------------------------------------------------
DATACLASSES = {"": S.ExperimentSpec, "slo.": S.SLOSpec, "function.": S.FunctionSpec, "workload.": S.WorkloadSpec,
               "variant.": S.VariantSpec, "variant.batching.": S.BatchingSpec, "variant.keep_alive.": S.KeepAliveSpec}
NOT_A_DATACLASS_FIELD = {"workload.peak_to_trough", "workload.period_s",  # in WorkloadSpec.params
                         "workload.trace_format"}  # WorkloadSpec.trace.format


def test_every_dataclass_default_is_the_tables():
    checked = set()
    for prefix, cls in DATACLASSES.items():
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            if key in RULES:
                assert f.default is not dataclasses.MISSING or RULES[key].required, key
                if f.default is not dataclasses.MISSING:
                    assert same(f.default, RULES[key].default), (key, f.default, RULES[key].default)
                checked.add(key)
    assert checked == set(RULES) - NOT_A_DATACLASS_FIELD


def test_batching_mode_none_runs_one_request_at_a_time_whatever_the_default_size():
    assert S.BatchingSpec().max_batch_size == 1
    assert S.BatchingSpec(mode="fixed").max_batch_size == S.DEFAULTS["variant.batching.max_batch_size"] == 8


# ---- the parsers -----------------------------------------------------------------------------------------
def parsed_defaults() -> dict:
    """What the parsers make of sections that give nothing but what they require."""
    ctx = S._Ctx()
    slo = S.parse_slo({}, "slo", ctx)
    function = S.parse_function({"name": "f", "model": "m"}, "functions[0]", ctx, known_models=["m"])
    workload = S.parse_workload({"pattern": "diurnal", "mean_rate_rps": 1, "duration_s": 10}, "workload", ctx)
    minutes = ",".join(str(m) for m in range(1, 1441))
    azure = f"HashOwner,HashApp,HashFunction,Trigger,{minutes}\no,a,f,http,{','.join(['1'] * 1440)}\n"
    trace = S.parse_workload({"pattern": "trace", "trace_content": azure, "duration_s": 60}, "workload", ctx)
    variant = S.parse_variant({"name": "v"}, "variants[0]", ctx)
    batching = S.parse_batching({"mode": "fixed"}, "variants[0].batching", ctx)
    keep_alive = S.parse_keep_alive({"policy": "histogram"}, "variants[0].keep_alive", ctx)
    experiment = S.parse_experiment({"name": "e", "functions": [{"name": "f", "model": "m"}],
                                     "workload": {"pattern": "constant", "rate_rps": 1, "duration_s": 1},
                                     "variants": [{"name": "v"}]}, known_models=["m"])
    assert not ctx.errors, ctx.errors
    sources = {"": experiment, "slo.": slo, "function.": function, "workload.": workload, "variant.": variant,
               "variant.batching.": batching, "variant.keep_alive.": keep_alive}
    out = {}
    for key in WITH_DEFAULT:
        prefix, name = key.rsplit(".", 1) if "." in key else ("", key)
        obj = sources[prefix + "." if prefix else ""]
        if key == "workload.trace_format":
            out[key] = trace.trace.format
        else:
            out[key] = obj.params[name] if key in NOT_A_DATACLASS_FIELD else getattr(obj, name)
    # the modes and policies are what a section without them gets
    out["variant.batching.mode"] = variant.batching.mode
    out["variant.keep_alive.policy"] = variant.keep_alive.policy
    assert experiment.slo == slo and experiment.variants[0] == variant
    return out


def test_the_parsers_fill_in_the_table_defaults_for_an_empty_section():
    got = parsed_defaults()
    for key in WITH_DEFAULT:
        assert same(got[key], S.DEFAULTS[key]), (key, got[key], S.DEFAULTS[key])


def test_an_absent_slo_and_an_empty_one_are_the_same_default_slo():
    base = {"name": "e", "functions": [{"name": "f", "model": "m"}],
            "workload": {"pattern": "constant", "rate_rps": 1, "duration_s": 1}, "variants": [{"name": "v"}]}
    absent = S.parse_experiment(base, known_models=["m"])
    empty = S.parse_experiment({**base, "slo": {}}, known_models=["m"])
    assert absent.slo == empty.slo == S.SLOSpec()


@pytest.mark.parametrize("key", sorted(k for k, r in RULES.items() if r.high is not None))
def test_the_parsers_enforce_the_table_bounds(key):
    r = RULES[key]
    prefix, name = key.rsplit(".", 1)
    too_high = r.high + (1 if r.integer else r.high * 0.01 + 0.001)
    too_low = r.low if r.low_open else r.low - (1 if r.integer else 0.001)
    for value in (too_high, too_low):
        with pytest.raises(S.SpecError) as info:
            parse_one(prefix, name, value)
        assert any(e.path.endswith(name) for e in info.value.errors), (key, value, info.value)
    lowest = r.low + 0.5 if r.low_open else r.low
    for value in (r.high, lowest):
        parse_one(prefix, name, value)  # no SpecError


def parse_one(prefix: str, name: str, value):
    if prefix == "slo":
        return S.parse_slo({name: value})
    if prefix == "function":
        return S.parse_function({"name": "f", "model": "m", name: value}, "functions[0]", known_models=["m"])
    if prefix == "workload":
        base = {"pattern": "diurnal", "mean_rate_rps": 0.001, "duration_s": 10, "time_compression": 10}
        base[name] = value
        if name == "duration_s":
            base["time_compression"] = S.MAX_COMPRESSION
        return S.parse_workload(base)
    if prefix == "variant":
        extra = {"sharing": "spatial", "max_instances": 1} if name == "share" else {}
        if name == "min_instances":
            extra = {"max_instances": S.MAX_INSTANCES}
        return S.parse_variant({"name": "v", **extra, name: value}, "variants[0]")
    section = prefix.split(".")[1]
    mode = {"batching": {"mode": "fixed"},
            "keep_alive": {"policy": "histogram", "bin_s": 0.001, "range_s": S.MAX_TTL_S}}[section]
    return S.parse_variant({"name": "v", section: {**mode, name: value}}, "variants[0]")


# ---- the editor ------------------------------------------------------------------------------------------
def test_the_editor_starts_a_new_experiment_from_the_table():
    from controlplane.experiments.forms import ExperimentEditor, SLOForm, VariantForm, WorkloadForm

    editor = ExperimentEditor()
    slo = editor.slo.initial
    assert float(slo["percentile"]) == S.DEFAULTS["slo.percentile"]
    assert same(slo["latency_ms"], S.DEFAULTS["slo.latency_ms"])
    assert same(slo["max_violation_pct"] / 100, S.DEFAULTS["slo.max_violation_rate"])
    assert slo["min_throughput_rps"] == S.DEFAULTS["slo.min_throughput_rps"]
    assert float(SLOForm.base_fields["percentile"].initial) == S.DEFAULTS["slo.percentile"]
    assert editor.basics.initial["device"] == editor.basics.fields["device"].initial == S.DEFAULTS["device"]
    assert same(editor.functions.forms[0].initial["weight"], S.DEFAULTS["function.weight"])
    assert same(editor.functions.empty_form.initial["weight"], S.DEFAULTS["function.weight"])
    for name in ("time_compression", "seed"):
        assert same(editor.workload.initial[name], S.DEFAULTS[f"workload.{name}"])
    assert editor.workload.fields["trace_format"].initial == S.DEFAULTS["workload.trace_format"]
    for name in ("peak_to_trough", "period_s"):  # optional diurnal parameters: blank shows the default
        placeholder = WorkloadForm.base_fields[name].widget.attrs["placeholder"]
        assert same(float(placeholder), S.DEFAULTS[f"workload.{name}"])

    variant_rules = {k for k in RULES if k.startswith("variant.")}
    assert set(VariantForm.RULES.values()) == variant_rules
    for row in (editor.variants.forms[0], editor.variants.empty_form):
        for field, rule in VariantForm.RULES.items():
            assert same(row.initial[field], S.DEFAULTS[rule]), (field, row.initial[field], S.DEFAULTS[rule])
            declared = VariantForm.base_fields[field].initial
            assert declared is None or same(declared, S.DEFAULTS[rule]), field


def test_an_untouched_editor_saves_the_same_variant_a_file_with_only_its_name_gives():
    from controlplane.experiments.forms import ExperimentEditor

    initial = ExperimentEditor()
    data = {}
    for form in [initial.basics, initial.slo, initial.workload, *initial.functions.forms, *initial.variants.forms,
                 *initial.steps.forms]:
        for name, field in form.fields.items():
            value = form.initial.get(name, field.initial)
            if value is not None and value is not False:
                data[form.add_prefix(name)] = "on" if value is True else str(value)
    for prefix, formset in (("functions", initial.functions), ("variants", initial.variants),
                            ("steps", initial.steps)):
        data[f"{prefix}-TOTAL_FORMS"] = str(len(formset.forms))
        data[f"{prefix}-INITIAL_FORMS"] = "0"
    data["name"] = "untouched"
    spec = ExperimentEditor(data=data).validate()
    assert spec is not None
    assert spec.variants[0] == S.parse_variant({"name": "baseline"}, "variants[0]")
    assert spec.slo == S.SLOSpec()


# ---- the API ---------------------------------------------------------------------------------------------
def serializer_fields() -> dict:
    from controlplane.experiments import serializers as ser

    docs = {"": ser.SpecDocument, "slo.": ser.SLODocument, "function.": ser.FunctionDocument,
            "workload.": ser.WorkloadDocument, "variant.": ser.VariantDocument,
            "variant.batching.": ser.BatchingDocument, "variant.keep_alive.": ser.KeepAliveDocument}
    out = {}
    for prefix, cls in docs.items():
        for name, field in cls().fields.items():
            if prefix + name in RULES:
                out[prefix + name] = (cls.__name__, name, field)
    return out


def test_the_api_documents_take_their_defaults_and_bounds_from_the_table():
    from rest_framework.fields import empty

    fields = serializer_fields()
    assert set(fields) == set(RULES)
    for key, (_, _, field) in fields.items():
        r = RULES[key]
        if r.required:
            assert field.required and field.default is empty, key
        elif r.default is None:
            assert not field.required and field.allow_null and field.default is empty, key
        else:
            assert not field.required and same(field.default, r.default), (key, field.default, r.default)
        if r.choices:
            assert list(field.choices) == list(r.choices), key
        elif r.low is not None:
            assert (field.min_value, field.max_value) == (r.low, r.high), key


def test_the_openapi_schema_states_the_table_defaults_and_bounds():
    from drf_spectacular.generators import SchemaGenerator

    schemas = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]
    for key, (component, name, _) in serializer_fields().items():
        r = RULES[key]
        prop = schemas[component]["properties"][name]
        if r.required or r.default is None:
            assert "default" not in prop, key
        else:
            assert same(prop["default"], r.default), (key, prop.get("default"), r.default)
        if r.low is not None and not r.choices:
            assert (prop["minimum"], prop["maximum"]) == (r.low, r.high), key
    runtime = schemas["VariantDocument"]["properties"]["runtime"]["allOf"][0]["$ref"].rsplit("/", 1)[1]
    assert schemas[runtime]["enum"] == list(S.RUNTIMES)


# ---- the database ----------------------------------------------------------------------------------------
def model_fields() -> dict:
    from controlplane.experiments.models import Experiment, Function, SLOTarget, Variant, Workload

    out = {"device": Experiment._meta.get_field("device"), "function.weight": Function._meta.get_field("weight")}
    for name in ("percentile", "latency_ms", "max_violation_rate", "min_throughput_rps"):
        out[f"slo.{name}"] = SLOTarget._meta.get_field(name)
    for name in ("time_compression", "seed", "duration_s"):
        out[f"workload.{name}"] = Workload._meta.get_field(name)
    columns = {"batching.mode": "batching_mode", "batching.max_batch_size": "max_batch_size",
               "batching.max_queue_delay_ms": "max_queue_delay_ms", "batching.shed": "shed",
               "keep_alive.policy": "keep_alive_policy", "keep_alive.ttl_s": "keep_alive_ttl_s"}
    for key in RULES:
        if key.startswith("variant."):
            rest = key.removeprefix("variant.")
            if rest.startswith("keep_alive.") and rest not in columns:
                continue  # histogram parameters live in keep_alive_params (JSON), given in full by the services
            out[key] = Variant._meta.get_field(columns.get(rest, rest))
    return out


def test_model_field_defaults_are_the_tables():
    fields = model_fields()
    for key, field in fields.items():
        r = RULES[key]
        if r.required:
            assert not field.has_default(), key
        elif r.default is None:
            assert field.null and field.get_default() is None, key
        else:
            assert same(field.get_default(), r.default), (key, field.get_default(), r.default)
        if r.choices:
            assert [c for c, _ in field.choices] == list(r.choices), key


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["variant.batching.max_batch_size", "variant.batching.max_queue_delay_ms",
                                 "variant.max_instances", "variant.repeats", "variant.platform_delay_ms",
                                 "variant.share", "slo.latency_ms", "slo.max_violation_rate"])
def test_the_database_refuses_values_outside_the_table_bounds(user, key):
    from django.db import IntegrityError, transaction

    from controlplane.experiments.models import Experiment, SLOTarget, Variant

    field = model_fields()[key]
    r = RULES[key]
    experiment = Experiment.objects.create(owner=user, name="e")
    outside = [r.high + (1 if r.integer else 0.5), r.low if r.low_open else r.low - 1]
    model = SLOTarget if key.startswith("slo.") else Variant
    extra = {"sharing": "spatial"} if key == "variant.share" else {}
    for i, value in enumerate(outside):
        with pytest.raises(IntegrityError), transaction.atomic():
            if model is Variant:
                Variant.objects.create(experiment=experiment, name=f"v{i}", **extra, **{field.name: value})
            else:
                SLOTarget.objects.create(experiment=experiment, **{field.name: value})
    if model is Variant:
        Variant.objects.create(experiment=experiment, name="ok", **extra, **{field.name: r.high})


# ---- docs/spec.md ----------------------------------------------------------------------------------------
SECTIONS = {"Top level": "", "SLO": "slo.", "Functions": "function.", "Workloads": "workload.", "Variants": "variant.",
            "Batching": "variant.batching.", "Keep-alive": "variant.keep_alive."}


def doc_rows() -> dict[str, dict[str, str]]:
    """{rule key: {column: cell}} from the field tables of docs/spec.md (tables with a "default" column)."""
    out: dict[str, dict[str, str]] = {}
    section = ""
    header: list[str] | None = None
    for line in SPEC_DOC.splitlines():
        heading = re.match(r"^#{2,3} (.+)$", line)
        if heading:
            section, header = heading[1].strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(line) <= set("|-: ") or "default" not in header or section not in SECTIONS:
            continue
        field = cells[0].strip("`")
        out[SECTIONS[section] + field] = dict(zip(header, cells, strict=False))
    return out


def doc_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return S._fmt(value)
    return str(value)


def test_docs_spec_states_every_default_and_bound_of_the_table():
    rows = doc_rows()
    # pattern parameters, stated in the patterns and traces tables
    in_text = {"workload.peak_to_trough", "workload.period_s", "workload.trace_format"}
    assert set(RULES) - in_text <= set(rows), sorted(set(RULES) - in_text - set(rows))
    for key in set(RULES) - in_text:
        r, row = RULES[key], rows[key]
        if r.required:
            assert row["required"] == "yes" and row["default"] == "", key
        elif r.default is None:
            assert not re.fullmatch(r"`[0-9.]+`", row["default"]), (key, row["default"])
        else:
            assert row["default"].startswith(f"`{doc_value(r.default)}`"), (key, row["default"], r.default)
            if "required" in row:
                assert row["required"] == "no", key
        if "bounds" in row and r.bounds_text():
            assert row["bounds"].startswith(r.bounds_text()), (key, row["bounds"], r.bounds_text())
    assert f"| `trace_format` | `{S.DEFAULTS['workload.trace_format']}` (the default)" in SPEC_DOC
    for key in in_text - {"workload.trace_format"}:
        r, name = RULES[key], key.rsplit(".", 1)[1]
        assert f"`{name}` ({r.bounds_text()}, default {doc_value(r.default)})" in SPEC_DOC, key


def test_docs_spec_lists_the_new_bound():
    assert f"| `MAX_PLATFORM_DELAY_MS` | {S._fmt(S.MAX_PLATFORM_DELAY_MS)} ms" in SPEC_DOC


# ---- the platform delay presets --------------------------------------------------------------------------
def test_the_platform_delay_presets_are_dated_sourced_and_within_bounds():
    r = RULES["variant.platform_delay_ms"]
    keys = [p.key for p in S.PLATFORM_DELAY_PRESETS]
    assert keys == ["none", "warm-pool", "fresh-pull"]
    assert S.PLATFORM_DELAY_PRESETS[0].delay_ms == r.default == 0
    for p in S.PLATFORM_DELAY_PRESETS:
        assert r.low <= p.delay_ms <= r.high
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.as_of) and p.reasoning
        assert p.delay_ms == 0 or "https://" in p.source


def test_both_docs_list_each_preset_with_its_value_and_date():
    method = METHOD_DOC.split("## Modelled platform delay", 1)[1]
    variants = SPEC_DOC.split("### Modelled platform delay", 1)[1]
    for p in S.PLATFORM_DELAY_PRESETS:
        assert f"| {p.label} | {S._fmt(p.delay_ms)} | {p.as_of} |" in variants, p.key
        assert f"| {p.label} | {p.delay_ms / 1000:g} s | {p.as_of} |" in method, p.key
        for url in re.findall(r"https://\S+", p.source):
            assert url.rstrip(";") in method, url
