"""The price catalogue page: every logged-in user reads it; staff add and edit entries on it.

Costs are computed from these entries (the worker looks the experiment's entry up when a trial starts), so
an edit changes the prices of trials run from then on, not of trials already stored.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import selectors, services
from .forms import FieldView, PriceEntryForm
from .models import PriceEntry


def _fields(form: PriceEntryForm) -> list[FieldView]:
    return [FieldView(form[name], wide=name == "source") for name in form.fields]


def _staff_only(request: HttpRequest) -> None:
    if not request.user.is_staff:
        raise PermissionDenied("Only staff can change the price catalogue.")


def _list(request: HttpRequest, form: PriceEntryForm | None = None, status: int = 200) -> HttpResponse:
    if form is None and request.user.is_staff:
        form = PriceEntryForm()
    return render(request, "experiments/prices.html", {
        "prices": selectors.price_list(), "form": form, "fields": _fields(form) if form is not None else [],
    }, status=status)


@login_required
@require_GET
def price_list(request: HttpRequest) -> HttpResponse:
    return _list(request)


@login_required
@require_POST
def price_create(request: HttpRequest) -> HttpResponse:
    _staff_only(request)
    form = PriceEntryForm(request.POST)
    if not form.is_valid():
        return _list(request, form, status=400)
    entry = services.price_entry_save(entry=form.instance)
    messages.success(request, f"Added the price entry “{entry.name}”.")
    return redirect(f"{reverse('price-list')}#price-{entry.pk}")


@login_required
@require_http_methods(["GET", "POST"])
def price_edit(request: HttpRequest, pk: int) -> HttpResponse:
    _staff_only(request)
    entry = get_object_or_404(PriceEntry, pk=pk)
    form = PriceEntryForm(request.POST or None, instance=entry)
    if request.method == "POST":
        if form.is_valid():
            entry = services.price_entry_save(entry=form.instance)
            messages.success(request, f"Saved the price entry “{entry.name}”. Trials run from now on use it.")
            return redirect(f"{reverse('price-list')}#price-{entry.pk}")
        status = 400
    else:
        status = 200
    return render(request, "experiments/price_edit.html", {"entry": entry, "form": form, "fields": _fields(form)},
                  status=status)
