import os

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="owner", password="owner-pass-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="outsider", password="outsider-pass-123")
