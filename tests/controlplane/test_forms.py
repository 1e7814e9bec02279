"""The editor's forms: the runtime choice and the modelled platform delay with its presets."""

from __future__ import annotations

import re

import pytest

from controlplane.experiments.forms import PLATFORM_DELAY_CHOICES, ExperimentEditor, VariantForm
from workers import spec as S


def post_data(editor: ExperimentEditor, **changes: str) -> dict:
    """What the browser posts for `editor` as rendered (every initial value), with `changes` applied."""
    data: dict[str, str] = {}
    forms = [editor.basics, editor.slo, editor.workload, *editor.functions.forms, *editor.variants.forms,
             *editor.steps.forms]
    for form in forms:
        for name, field in form.fields.items():
            value = form.initial.get(name, field.initial)
            if value is not None and value is not False:
                data[form.add_prefix(name)] = "on" if value is True else str(value)
    for prefix, formset in (("functions", editor.functions), ("variants", editor.variants), ("steps", editor.steps)):
        data[f"{prefix}-TOTAL_FORMS"] = str(len(formset.forms))
        data[f"{prefix}-INITIAL_FORMS"] = "0"
    data["name"] = "forms"
    data.update(changes)
    return data


def test_a_variant_row_offers_the_runtimes_and_the_dated_presets_labelled_modelled():
    html = ExperimentEditor().variants.forms[0].as_div()
    assert re.search(r'<select name="variants-0-runtime"[^>]*>', html)
    assert "thread, no isolation" in html and "process per instance" in html
    preset = re.search(r'<select name="variants-0-platform_delay_preset"[^>]*data-delay-preset[^>]*>(.*?)</select>',
                       html, re.S)
    assert preset, html
    options = re.findall(r'<option value="([^"]*)"', preset[1])
    assert options == [f"{p.delay_ms:g}" for p in S.PLATFORM_DELAY_PRESETS] + [""]
    assert "warm container pool: 2 s (as of 2026-12-01)" in preset[1]
    assert "fresh container with image pull: 25 s (as of 2026-12-01)" in preset[1]
    assert VariantForm.base_fields["platform_delay_ms"].label.startswith("Modelled")


@pytest.mark.parametrize("delay, preset", [(0, "0"), (2_000.0, "2000"), (25_000, "25000"), (1_234, "")])
def test_a_stored_delay_shows_its_preset_or_custom(delay, preset):
    spec = {"name": "e", "functions": [{"name": "f", "model": "null"}],
            "workload": {"pattern": "constant", "rate_rps": 1, "duration_s": 1},
            "variants": [{"name": "v", "runtime": "thread", "platform_delay_ms": delay}]}
    row = ExperimentEditor(initial=spec).variants.forms[0]
    assert (row.initial["runtime"], row.initial["platform_delay_ms"]) == ("thread", delay)
    assert row.initial["platform_delay_preset"] == preset
    assert re.search(rf'<option value="{preset}" selected>', str(row["platform_delay_preset"]))


def test_the_runtime_and_delay_a_user_picks_reach_the_spec():
    data = post_data(ExperimentEditor(), **{"variants-0-runtime": "thread", "variants-0-platform_delay_preset": "25000",
                                           "variants-0-platform_delay_ms": "25000"})
    editor = ExperimentEditor(data=data)
    spec = editor.validate()
    assert spec is not None, editor.summary
    assert (spec.variants[0].runtime, spec.variants[0].platform_delay_ms) == ("thread", 25_000.0)


def test_a_custom_delay_is_kept_whatever_the_preset_select_says():
    # The select only helps fill the number in; the number is what is saved.
    data = post_data(ExperimentEditor(), **{"variants-0-platform_delay_preset": "",
                                           "variants-0-platform_delay_ms": "1500"})
    spec = ExperimentEditor(data=data).validate()
    assert spec.variants[0].platform_delay_ms == 1_500.0


@pytest.mark.parametrize("changes, field, message", [
    ({"variants-0-sharing": "spatial", "variants-0-runtime": "thread"}, "runtime",
     "must be process for sharing spatial"),
    ({"variants-0-platform_delay_ms": "700000"}, "platform_delay_ms", "must be between 0 and 600000"),
    ({"variants-0-platform_delay_ms": "-5"}, "platform_delay_ms", "must be between 0 and 600000"),
])
def test_runtime_and_delay_errors_sit_on_their_fields(changes, field, message):
    editor = ExperimentEditor(data=post_data(ExperimentEditor(), **changes))
    assert editor.validate() is None
    row = editor.variants.forms[0]
    assert any(e.startswith(message) for e in row.errors[field]), row.errors
    label = f"Variants › #1 baseline › {VariantForm.base_fields[field].label}"
    assert any(s.label == label and s.message.startswith(message) for s in editor.summary), editor.summary


def test_the_preset_choices_follow_the_spec_presets():
    assert [v for v, _ in PLATFORM_DELAY_CHOICES][:-1] == [f"{p.delay_ms:g}" for p in S.PLATFORM_DELAY_PRESETS]
    assert PLATFORM_DELAY_CHOICES[-1] == ("", "custom")
