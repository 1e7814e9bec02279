"""The price catalogue page: every user reads it, staff add and edit entries on it, the rules hold."""

from __future__ import annotations

import pytest
from django.urls import reverse

from controlplane.experiments.models import PriceEntry

pytestmark = pytest.mark.django_db

NEW = {"name": "L40S-48GB", "accelerator": "NVIDIA L40S 48GB", "memory_gb": "48", "on_demand_usd_per_h": "1.86",
       "serverless_usd_per_s": "0.00053", "min_billed_s": "0", "granularity_s": "1", "idle_tail_s": "5",
       "as_of": "2026-11-20", "source": "RunPod flex L40S per second: https://www.runpod.io/pricing"}


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(username="staff", password="staff-pass-123", is_staff=True)


def test_any_user_reads_every_entry_with_prices_billing_rules_date_and_source(client, user, price_catalogue):
    client.force_login(user)
    response = client.get(reverse("price-list"))
    html = response.content.decode()
    assert response.status_code == 200
    h100 = PriceEntry.objects.get(name="H100-80GB")
    row = html[html.index(f'data-price="{h100.name}"'):]
    row = row[:row.index("</tr>")]
    assert "NVIDIA H100 80GB" in row and "$6.88/h" in row and "$0.00116/s" in row
    assert "5 s" in row and "1 s" in row and "0 s" in row and "2026-11-01" in row and "AWS p5" in row
    assert "$0.0000333/s" in html  # the cpu entry: three significant figures, not $0.0000
    assert "price-edit" not in html and 'id="price-form"' not in html and "Staff can edit these" in html


def test_the_catalogue_is_in_the_navigation_and_needs_a_login(client, user, price_catalogue):
    response = client.get(reverse("price-list"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    client.force_login(user)
    nav = client.get(reverse("experiment-list")).content.decode()
    assert f'href="{reverse("price-list")}" id="nav-prices"' in nav


def test_staff_add_an_entry_on_the_page(client, staff, price_catalogue):
    client.force_login(staff)
    html = client.get(reverse("price-list")).content.decode()
    assert 'id="price-form"' in html and f'action="{reverse("price-create")}"' in html

    response = client.post(reverse("price-create"), NEW)

    entry = PriceEntry.objects.get(name="L40S-48GB")
    assert response.status_code == 302 and response["Location"].endswith(f"#price-{entry.pk}")
    assert (entry.on_demand_usd_per_h, entry.serverless_usd_per_s, entry.idle_tail_s) == (1.86, 0.00053, 5.0)
    html = client.get(reverse("price-list")).content.decode()
    assert "L40S-48GB" in html and 'href="https://www.runpod.io/pricing"' in html


def test_staff_edit_an_entry(client, staff, price_catalogue):
    client.force_login(staff)
    cpu = PriceEntry.objects.get(name="cpu")
    page = client.get(reverse("price-edit", args=[cpu.pk]))
    assert page.status_code == 200 and 'value="cpu"' in page.content.decode()
    data = {**NEW, "name": "cpu", "accelerator": cpu.accelerator, "on_demand_usd_per_h": "0.2",
            "serverless_usd_per_s": "0.00005", "granularity_s": "0.001", "idle_tail_s": "0", "as_of": "2026-12-01"}

    response = client.post(reverse("price-edit", args=[cpu.pk]), data)

    cpu.refresh_from_db()
    assert response.status_code == 302
    assert (cpu.on_demand_usd_per_h, cpu.serverless_usd_per_s, str(cpu.as_of)) == (0.2, 0.00005, "2026-12-01")


@pytest.mark.parametrize("change, field", [
    ({"serverless_usd_per_s": "-0.1"}, "serverless_usd_per_s"),
    ({"granularity_s": "0"}, "granularity_s"),
    ({"name": "cpu"}, "name"),  # names are unique
    ({"as_of": ""}, "as_of"),
])
def test_a_bad_entry_is_refused_with_its_field_and_nothing_changes(client, staff, price_catalogue, change, field):
    client.force_login(staff)
    before = list(PriceEntry.objects.values_list("name", "serverless_usd_per_s", "granularity_s"))

    response = client.post(reverse("price-create"), {**NEW, **change})

    assert response.status_code == 400
    assert response.context["form"].errors
    assert field in response.context["form"].errors or response.context["form"].non_field_errors()
    assert list(PriceEntry.objects.values_list("name", "serverless_usd_per_s", "granularity_s")) == before


def test_only_staff_change_prices(client, user, price_catalogue):
    client.force_login(user)
    cpu = PriceEntry.objects.get(name="cpu")
    assert client.post(reverse("price-create"), NEW).status_code == 403
    assert client.get(reverse("price-edit", args=[cpu.pk])).status_code == 403
    assert client.post(reverse("price-edit", args=[cpu.pk]), {**NEW, "name": "cpu"}).status_code == 403
    assert not PriceEntry.objects.filter(name="L40S-48GB").exists()
    assert PriceEntry.objects.get(name="cpu").serverless_usd_per_s == cpu.serverless_usd_per_s
