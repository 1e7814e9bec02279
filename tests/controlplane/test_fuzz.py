"""Bad input, fuzzed (hypothesis): the spec parser, the trace parser, the spec text decoder and the editor's
forms raise nothing but their validation error, and every message names its field. Each test prints how
many cases it ran; the counts are kept modest so the suite stays fast."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.experiments import spec_io
from controlplane.experiments.forms import ExperimentEditor, PriceEntryForm
from tests.controlplane.test_forms import post_data
from workers import spec as S
from workers.workload import TRACE_FORMATS, TraceError, parse_trace

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
cases: dict[str, int] = {}

VALID = {
    "name": "fuzz", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 50, "max_violation_rate": 0.01},
    "functions": [{"name": "classify", "model": "mlp-small"}],
    "workload": {"pattern": "poisson", "rate_rps": 20, "duration_s": 5, "seed": 7},
    "variants": [{"name": "dedicated", "batching": {"mode": "none"}, "min_instances": 1, "max_instances": 1},
                 {"name": "batched", "batching": {"mode": "fixed", "max_batch_size": 8, "max_queue_delay_ms": 4}}],
}

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["", "none", "fixed", "adaptive", "trace", "poisson", "azure2019", "cpu", "cuda:0",
                              "1e309", "-1", "NaN", "mlp-small", "classify", "dedicated"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


def count(name: str) -> None:
    cases[name] = cases.get(name, 0) + 1


def report(name: str, capsys) -> None:
    with capsys.disabled():
        print(f"\nfuzz {name}: {cases.get(name, 0)} cases")


def paths(value, prefix=()):
    """Every place in a JSON document: (key or index path)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


ALL_PATHS = list(paths(VALID))[1:]


def replaced(doc, where, value):
    doc = copy.deepcopy(doc)
    target = doc
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return doc


def check_errors(exc: S.SpecError) -> None:
    assert exc.errors, "a SpecError lists its problems"
    for e in exc.errors:
        assert isinstance(e.path, str) and isinstance(e.message, str) and e.message
        assert str(e).startswith(e.path)


# ---- the spec parser -------------------------------------------------------------------------------------------
@FUZZ
@given(doc=json_values)
def test_any_json_value_is_a_spec_or_a_spec_error(doc):
    count("parse_experiment(any value)")
    try:
        S.parse_experiment(doc)
    except S.SpecError as exc:
        check_errors(exc)


@FUZZ
@given(where=st.sampled_from(ALL_PATHS), value=json_values)
def test_one_bad_field_in_a_valid_spec_is_refused_naming_a_field(where, value):
    count("parse_experiment(one field replaced)")
    try:
        S.parse_experiment(replaced(VALID, where, value))
    except S.SpecError as exc:
        check_errors(exc)
        # The problem is below the top level, so at least one message names a field path.
        assert any(e.path for e in exc.errors), exc.errors


@FUZZ
@given(extra=st.dictionaries(st.text(min_size=1, max_size=12), json_values, min_size=1, max_size=3))
def test_unknown_keys_are_named(extra):
    count("parse_experiment(unknown keys)")
    doc = {**VALID, **{k: v for k, v in extra.items() if k not in VALID}}
    if doc == VALID:
        return
    with pytest.raises(S.SpecError) as exc:
        S.parse_experiment(doc)
    check_errors(exc.value)
    assert {e.path for e in exc.value.errors} >= {k for k in extra if k not in VALID}


def test_spec_parser_case_counts(capsys):
    for name in ("parse_experiment(any value)", "parse_experiment(one field replaced)",
                 "parse_experiment(unknown keys)"):
        report(name, capsys)


# ---- spec text (JSON / YAML) -----------------------------------------------------------------------------------
@FUZZ
@given(text=st.text(max_size=300) | st.builds(lambda v: json.dumps(v), json_values)
       | st.from_regex(r"[\[\]{}:,&*\- \n\"a-z0-9!]{0,200}", fullmatch=True))
def test_any_text_decodes_or_is_a_spec_error(text):
    count("parse_spec_text")
    for yaml_first in (False, True):
        try:
            spec_io.parse_spec_text(text, yaml_first=yaml_first)
        except S.SpecError as exc:
            check_errors(exc)


def test_spec_text_case_counts(capsys):
    report("parse_spec_text", capsys)


# ---- the trace parser --------------------------------------------------------------------------------------------
cells = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), st.floats().map(repr),
                  st.text(alphabet="0123456789.eE+-nainf", max_size=8), st.text(max_size=6),
                  st.sampled_from(["http", "timer", "queue", "4e9", "1e309", "", "HashOwner"]))
csv_text = st.lists(st.lists(cells, min_size=0, max_size=8).map(",".join), max_size=6).map("\n".join)


@FUZZ
@given(fmt=st.sampled_from(TRACE_FORMATS), content=st.text(max_size=200) | csv_text,
       function_hash=st.sampled_from(["", "f1", "HashFunction"]))
def test_any_trace_text_parses_or_is_a_trace_error(fmt, content, function_hash):
    count("parse_trace")
    try:
        parse_trace(content, fmt, function_hash)
    except TraceError as exc:
        assert str(exc)


def test_trace_parser_case_counts(capsys):
    report("parse_trace", capsys)


# ---- the editor's forms --------------------------------------------------------------------------------------
BASE_POST = None


def base_post() -> dict:
    global BASE_POST
    if BASE_POST is None:
        BASE_POST = post_data(ExperimentEditor())
    return BASE_POST


form_values = (st.text(max_size=12) | st.integers(min_value=-(2**70), max_value=2**70).map(str)
               | st.sampled_from(["", "on", "1e309", "nan", "-0", "999999999999", "none", "fixed", "trace"]))


@pytest.mark.django_db
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_any_editor_post_validates_or_names_its_fields(data):
    count("ExperimentEditor")
    post = dict(base_post())
    keys = data.draw(st.lists(st.sampled_from(sorted(post) + ["functions-TOTAL_FORMS", "variants-TOTAL_FORMS",
                                                              "steps-TOTAL_FORMS", "unknown-field"]),
                              min_size=1, max_size=4, unique=True))
    for key in keys:
        post[key] = data.draw(form_values)
    editor = ExperimentEditor(data=post)
    spec = editor.validate()
    if spec is None:
        assert editor.summary, "an invalid post lists its problems"


PRICE_FIELDS = list(PriceEntryForm.Meta.fields)


@pytest.mark.django_db
@FUZZ
@given(post=st.fixed_dictionaries({}, optional={f: form_values for f in PRICE_FIELDS}))
def test_any_price_entry_post_validates_or_names_its_fields(post):
    count("PriceEntryForm")
    form = PriceEntryForm(data=post)
    if not form.is_valid():
        assert all(field == "__all__" or field in PRICE_FIELDS for field in form.errors), form.errors


def test_editor_case_counts(capsys):
    report("ExperimentEditor", capsys)
    report("PriceEntryForm", capsys)
