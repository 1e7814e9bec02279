"""Share links: the owner makes a read-only link to a run's HTML report (random token, expiry date, revocable);
anyone with it sees that report, anonymously, and nothing else; 404 once it has expired or been revoked."""

from __future__ import annotations

import datetime
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from controlplane.experiments import comparison as C
from controlplane.experiments.models import ShareLink
from controlplane.experiments.reports import exports

from .test_comparison import finish, run, summary, variant

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished_run(user, price_catalogue):
    experiment, by = run(user, [variant("always", min_instances=1), variant("cold")])
    finish(by["always"][0], summary(30.0))
    finish(by["cold"][0], summary(40.0, busy_s=10.0))
    return experiment


def make_link(client, experiment, **data) -> ShareLink:
    r = client.post(reverse("experiment-share", kwargs={"code": experiment.code}), data)
    assert r.status_code == 302
    return ShareLink.objects.filter(experiment=experiment).order_by("-id").first()


def test_the_owner_makes_a_link_that_shows_the_html_report_anonymously(client, finished_run, user):
    client.force_login(user)
    link = make_link(client, finished_run, run="1", days="3")
    assert link.run_number == 1 and len(link.token) >= 40
    assert timezone.now() + datetime.timedelta(days=2, hours=23) < link.expires_at
    listing = client.get(reverse("experiment-share", kwargs={"code": finished_run.code})).content.decode()
    assert f"/share/{link.token}/" in listing and "live" in listing

    client.logout()
    r = client.get(f"/share/{link.token}/")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/html")
    html = r.content.decode()
    data = C.experiment_comparison(experiment=finished_run, run=1)
    assert data["recommendation"]["text"].split(":")[0] in html
    assert C.format_ms(data["rows"][0]["figures"]["p99_ms"]["value"]) in html
    # the report and nothing else: no link into the site, no script, nothing fetched from elsewhere
    assert not re.search(r'href="/(?!/)', html) and "<script" not in html.lower()
    assert not re.search(r'(src|href)="https?://', html)
    assert "default-src 'none'" in r["Content-Security-Policy"]
    assert r["Referrer-Policy"] == "no-referrer" and "noindex" in r["X-Robots-Tag"]
    # the token opens no other page
    for url in (finished_run.get_absolute_url(), reverse("experiment-compare", kwargs={"code": finished_run.code}),
                reverse("experiment-share", kwargs={"code": finished_run.code})):
        assert client.get(url).status_code == 302  # to the login page
    assert client.get(f"/api/experiments/{finished_run.code}/").status_code in (401, 403)


def test_an_expired_or_revoked_link_is_404_and_only_the_owner_revokes(client, finished_run, user, other_user):
    live = exports.share_link_create(owner=user, experiment=finished_run, days=1)
    expired = exports.share_link_create(owner=user, experiment=finished_run, days=1)
    ShareLink.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert client.get(f"/share/{expired.token}/").status_code == 404
    assert client.get(f"/share/{live.token}/").status_code == 200
    assert client.get("/share/not-a-token/").status_code == 404

    revoke = reverse("share-link-revoke", kwargs={"pk": live.pk})
    client.force_login(other_user)
    assert client.post(revoke).status_code == 404
    assert client.get(reverse("experiment-share", kwargs={"code": finished_run.code})).status_code == 404
    client.logout()
    assert client.get(f"/share/{live.token}/").status_code == 200
    client.force_login(user)
    assert client.post(revoke).status_code == 302
    client.logout()
    assert client.get(f"/share/{live.token}/").status_code == 404


def test_a_link_needs_a_run_and_a_sane_expiry(finished_run, user, price_catalogue):
    from workers import spec as S

    with pytest.raises(S.SpecError, match="days"):
        exports.share_link_create(owner=user, experiment=finished_run, days=0)
    with pytest.raises(S.SpecError, match="no run 7"):
        exports.share_link_create(owner=user, experiment=finished_run, run=7)
    a = exports.share_link_create(owner=user, experiment=finished_run)
    b = exports.share_link_create(owner=user, experiment=finished_run)
    assert a.token != b.token and a.run_number == 1
