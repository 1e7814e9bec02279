"""The Models page in a real browser: an ONNX file dropped on the page uploads with a progress bar and is listed;
the editor then offers it beside the zoo."""

from __future__ import annotations

import base64

import pytest

from controlplane.registry.models import Model
from tests.registry.onnx_files import classifier

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def drop_file(page, selector: str, name: str, data: bytes) -> None:
    """What a user's drag and drop does: a drop event whose DataTransfer holds the file."""
    page.evaluate("""([selector, name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "application/octet-stream"}));
        document.querySelector(selector).dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true,
                                                                              cancelable: true}));
    }""", [selector, name, base64.b64encode(data).decode()])


def test_a_dropped_onnx_file_uploads_with_progress_and_is_offered_in_the_editor(page, user, media_root, tmp_path):
    page.goto("/models/")
    drop_file(page, "#drop-zone", "my-classifier.onnx", classifier(tmp_path / "clf.onnx").read_bytes())
    assert "my-classifier.onnx" in page.text_content("#drop-file")
    assert page.input_value("#model-name") == "my-classifier"  # named after the file
    with page.expect_navigation():  # the page reloads once the model is stored
        page.click("#upload-button")
    row = page.locator("tr[data-model='my-classifier']")
    assert "dynamic" in row.text_content() and "16" in row.text_content()
    assert Model.objects.get(owner=user).name == "my-classifier"

    page.goto("/experiments/new/")
    option = page.locator("#id_functions-0-model option[value='my-classifier']")
    assert "your ONNX model, input 16" in option.text_content()


def test_a_refused_file_says_why_on_the_page(page, media_root):
    page.goto("/models/")
    drop_file(page, "#drop-zone", "notes.onnx", b"these are not the weights you are looking for")
    page.click("#upload-button")
    page.wait_for_function("() => document.getElementById('upload-status').textContent.includes('Refused')")
    assert "not an ONNX model" in page.text_content("#upload-status")
    assert page.is_visible("#upload-progress")
    assert page.eval_on_selector("#upload-progress", "e => e.value") == 100  # sent in full, then refused
    assert not Model.objects.exists()
