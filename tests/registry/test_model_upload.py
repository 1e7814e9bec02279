"""Uploading ONNX models: stored with their hash and signature, or refused with a reason; private to the owner."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from rest_framework.test import APIClient

from controlplane.registry.models import Model

from .onnx_files import classifier, custom_domain, external_data, nul_in_names

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def outsider(other_user):
    client = APIClient()
    client.force_authenticate(other_user)
    return client


def upload(client, path: Path, name: str):
    with open(path, "rb") as fh:
        return client.post(reverse("api-models"), {"name": name, "file": fh}, format="multipart")


def incoming_files(media_root) -> list[Path]:
    folder = Path(media_root) / "models" / "incoming"
    return list(folder.iterdir()) if folder.exists() else []


def test_an_uploaded_onnx_model_is_stored_with_its_hash_and_signature(owner, user, media_root, tmp_path):
    path = classifier(tmp_path / "clf.onnx")
    response = upload(owner, path, "my-classifier")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["size_bytes"] == path.stat().st_size
    assert body["inputs"] == [{"name": "x", "shape": ["batch", 16], "dtype": "float32"}]
    assert body["dynamic_batch"] is True and body["input_shape"] == [16] and body["opset"] == 17
    stored = Model.objects.get(owner=user, name="my-classifier")
    assert Path(stored.file.path).read_bytes() == path.read_bytes()
    assert incoming_files(media_root) == []
    listed = [m for m in owner.get(reverse("api-models")).json() if m["source"] == "upload"]
    assert [m["key"] for m in listed] == ["my-classifier"]


def test_a_model_without_a_dynamic_batch_dimension_is_marked_batch_1(owner, media_root, tmp_path):
    body = upload(owner, classifier(tmp_path / "fixed.onnx", dynamic_batch=False), "fixed").json()
    assert body["dynamic_batch"] is False and body["input_shape"] == [1, 16]


def not_onnx(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04 this is a zip file, not a model")
    return path


@pytest.mark.parametrize(("make", "reason"), [
    (not_onnx, "not an ONNX model"),
    (custom_domain, "custom operator domain(s) com.example.custom"),
    (external_data, "references external data (../../../etc/passwd)"),
    (nul_in_names, "NUL character"),
])
def test_a_file_that_cannot_run_here_is_refused_with_the_reason_and_not_kept(owner, media_root, tmp_path, make,
                                                                               reason):
    path = make(tmp_path / "bad.onnx")
    response = upload(owner, path, "bad")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "file"
    assert reason in response.json()["errors"][0]["message"]
    assert not Model.objects.exists()
    assert incoming_files(media_root) == []
    assert not list((Path(media_root) / "models").glob("*/model.onnx"))


def test_an_upload_over_the_size_cap_is_refused_while_it_streams(owner, media_root, tmp_path, settings):
    path = classifier(tmp_path / "clf.onnx", hidden=256)
    settings.MODEL_UPLOAD_MAX_BYTES = path.stat().st_size // 2
    response = upload(owner, path, "too-big")
    assert response.status_code == 413
    assert "larger than" in response.json()["errors"][0]["message"]
    assert not Model.objects.exists() and incoming_files(media_root) == []


def test_a_name_taken_by_a_zoo_model_or_by_another_of_yours_is_refused(owner, media_root, tmp_path):
    path = classifier(tmp_path / "clf.onnx")
    assert upload(owner, path, "mlp-small").json()["errors"][0] == {
        "path": "name", "message": "'mlp-small' is a built-in or installed model; choose another name"}
    assert upload(owner, path, "mine").status_code == 201
    assert upload(owner, path, "mine").json()["errors"][0]["path"] == "name"


def test_nobody_can_see_delete_or_name_another_users_model(owner, outsider, media_root, tmp_path, spec_data):
    code = upload(owner, classifier(tmp_path / "clf.onnx"), "my-classifier").json()["code"]
    detail = reverse("api-model-detail", args=[code])
    assert outsider.get(detail).status_code == 404
    assert outsider.delete(detail).status_code == 404
    assert [m for m in outsider.get(reverse("api-models")).json() if m["source"] == "upload"] == []
    spec_data["functions"][0]["model"] = "my-classifier"
    spec_data["variants"] = [{"name": "dedicated"}]
    refused = outsider.post(reverse("api-experiment-list"), spec_data, format="json")
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["path"] == "functions[0].model"
    assert "unknown model 'my-classifier'" in refused.json()["errors"][0]["message"]
    assert owner.post(reverse("api-experiment-list"), spec_data, format="json").status_code == 201
    assert owner.delete(detail).status_code == 204
    assert not Model.objects.exists()


def test_anonymous_users_can_neither_list_nor_upload(media_root, tmp_path):
    anonymous = APIClient()
    assert anonymous.get(reverse("api-models")).status_code in (401, 403)
    assert upload(anonymous, classifier(tmp_path / "clf.onnx"), "x").status_code in (401, 403)
    assert not Model.objects.exists()


def test_batching_is_refused_for_a_model_that_runs_at_batch_1(owner, media_root, tmp_path, spec_data):
    upload(owner, classifier(tmp_path / "fixed.onnx", dynamic_batch=False), "fixed")
    spec_data["functions"][0]["model"] = "fixed"
    response = owner.post(reverse("api-experiment-list"), spec_data, format="json")
    assert response.status_code == 400
    assert [e["path"] for e in response.json()["errors"]] == ["variants[1].batching.max_batch_size"]
    assert "runs at batch 1" in response.json()["errors"][0]["message"]


def test_an_uploaded_model_runs_only_under_onnxruntime(owner, media_root, tmp_path, spec_data):
    upload(owner, classifier(tmp_path / "clf.onnx"), "clf")
    spec_data["functions"][0].update(model="clf", model_runtime="torch")
    response = owner.post(reverse("api-experiment-list"), spec_data, format="json")
    assert response.json()["errors"][0]["path"] == "functions[0].model_runtime"


def test_import_model_registers_a_file_like_an_upload(user, media_root, tmp_path):
    path = classifier(tmp_path / "clf.onnx")
    out = io.StringIO()
    call_command("import_model", str(path), "--name", "cli-model", "--owner", user.username, stdout=out)
    stored = Model.objects.get(owner=user, name="cli-model")
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stored.sha256 in out.getvalue()
    with pytest.raises(CommandError, match="custom operator"):
        call_command("import_model", str(custom_domain(tmp_path / "c.onnx")), "--name", "c", "--owner",
                     user.username, stdout=io.StringIO())
