"""The REST API: thin views over the same services and selectors the pages use.

The document format is the experiment spec (docs/spec.md), validated by `workers.spec.parse_experiment`
like spec files and forms. Invalid input answers 400 with `{"detail": ..., "errors": [{"path", "message"}]}`.
Everything is private to its owner: anyone else's experiment or trial is 404, never 403, so codes don't leak.
"""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ParseError
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from workers import spec as S

from . import comparison, selectors, services, spec_io
from . import serializers as ser
from .limits import BodyTooLarge, LimitedJSONParser

ERRORS = OpenApiResponse(ser.ErrorResponseSerializer, description="Invalid input: every problem with its field path.")
NOT_FOUND = OpenApiResponse(description="No such object, or it is not yours.")
RUN_PARAM = OpenApiParameter("run", int, description="Run number (default: the latest run).")


def error_response(errors: list[S.FieldError], status_code: int = status.HTTP_400_BAD_REQUEST) -> Response:
    detail = str(errors[0]) if len(errors) == 1 else f"{len(errors)} problems: " + "; ".join(map(str, errors))
    return Response({"detail": detail, "errors": [{"path": e.path, "message": e.message} for e in errors]},
                    status=status_code)


class SpecAPIView(APIView):
    """Turns SpecError (and unreadable JSON) into the API's one error format."""

    def handle_exception(self, exc):
        if isinstance(exc, S.SpecError):
            return error_response(exc.errors)
        if isinstance(exc, ParseError):
            return error_response([S.FieldError("", str(exc.detail))])
        if isinstance(exc, BodyTooLarge):
            return error_response([S.FieldError("", str(exc.detail))], status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        return super().handle_exception(exc)


def _positive_int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise S.SpecError([S.FieldError(name, "must be a whole number, 0 or more")])
    return value


def _experiment_body(experiment, request: Request, *, code: int = status.HTTP_200_OK) -> Response:
    data = ser.ExperimentDetailSerializer(selectors.experiment_with_status(experiment), context={"request": request}).data
    headers = {"Location": data["url"]} if code == status.HTTP_201_CREATED else None
    return Response(data, status=code, headers=headers)


def _rows(trials, request: Request) -> list[dict]:
    return ser.TrialRowSerializer([selectors.trial_result_row(t) for t in trials], many=True,
                                  context={"request": request}).data


# ---- experiments --------------------------------------------------------------------------------------------
class ExperimentListView(SpecAPIView, GenericAPIView):
    """Your experiments, most recently changed first; POST a spec document to create one."""

    parser_classes = [LimitedJSONParser]
    serializer_class = ser.ExperimentSerializer

    @extend_schema(summary="Your experiments", responses=ser.ExperimentSerializer(many=True))
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.experiment_list_for(user=request.user))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(summary="Create an experiment from a spec document", request=ser.SpecDocument,
                   responses={201: ser.ExperimentDetailSerializer, 400: ERRORS})
    def post(self, request: Request) -> Response:
        experiment = services.experiment_import(owner=request.user, data=request.data)
        return _experiment_body(experiment, request, code=status.HTTP_201_CREATED)


class ExperimentDetailView(SpecAPIView):
    """One experiment. PUT replaces its whole spec; its code and trials stay."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(summary="One experiment, with its spec", responses={200: ser.ExperimentDetailSerializer,
                                                                      404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        return _experiment_body(selectors.experiment_get_for(user=request.user, code=code), request)

    @extend_schema(summary="Replace the experiment's spec (code and trials stay)", request=ser.SpecDocument,
                   responses={200: ser.ExperimentDetailSerializer, 400: ERRORS, 404: NOT_FOUND})
    def put(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        experiment = services.experiment_import(owner=request.user, data=request.data, experiment=experiment)
        return _experiment_body(experiment, request)

    @extend_schema(summary="Delete the experiment and its trials", responses={204: None, 404: NOT_FOUND})
    def delete(self, request: Request, code) -> Response:
        services.experiment_delete(experiment=selectors.experiment_get_for(user=request.user, code=code))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _object_body(request: Request, *, allowed: tuple[str, ...]) -> dict:
    """An optional JSON object body with only `allowed` keys (an empty body is {}); else a 400 naming the field."""
    body = request.data if request.data not in (None, "") else {}
    if not isinstance(body, dict):
        raise S.SpecError([S.FieldError("", "must be an object")])
    unknown = [S.FieldError(k, f"unknown field (allowed: {', '.join(allowed)})") for k in body if k not in allowed]
    if unknown:
        raise S.SpecError(unknown)
    return body


class ExperimentRunView(SpecAPIView):
    """Queue a run: one trial per variant x repeat, each sent to its device pool's queue."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(summary="Queue a run: one trial per variant x repeat", request=ser.RunRequest,
                   responses={202: ser.RunResponseSerializer, 400: ERRORS, 404: NOT_FOUND})
    def post(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        body = _object_body(request, allowed=("repeats", "variants", "simulate"))
        trials = services.experiment_run(experiment=experiment, user=request.user, repeats=body.get("repeats"),
                                         variant_names=body.get("variants"), simulate=body.get("simulate"))
        return Response({"run_number": trials[0].run_number if trials else None, "trials": _rows(trials, request),
                         "unsent": services.trials_unsent(trials)}, status=status.HTTP_202_ACCEPTED)


class ExperimentCancelView(SpecAPIView):
    """Cancel queued trials at once and ask running ones to stop."""

    @extend_schema(summary="Cancel every unfinished trial", request=None,
                   responses={200: ser.CancelResponseSerializer, 404: NOT_FOUND})
    def post(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        return Response({"cancelled": services.experiment_cancel(experiment=experiment)})


class ExperimentSpecView(SpecAPIView):
    """The experiment as a spec document (trace text inlined), ready to import elsewhere."""

    @extend_schema(summary="Export the experiment as a spec document", responses={200: ser.SpecDocument,
                                                                                  404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        return Response(spec_io.experiment_to_dict(experiment))


class ExperimentCloneView(SpecAPIView):
    """A copy of the experiment's settings under a new code (trials are not copied)."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(summary="Copy the experiment (settings, not trials)", request=ser.CloneRequest,
                   responses={201: ser.ExperimentDetailSerializer, 400: ERRORS, 404: NOT_FOUND})
    def post(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        name = _object_body(request, allowed=("name",)).get("name")
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 200):
            raise S.SpecError([S.FieldError("name", "must be a non-empty string of at most 200 characters")])
        clone = services.experiment_clone(experiment=experiment, owner=request.user,
                                          name=name.strip() if name else None)
        return _experiment_body(clone, request, code=status.HTTP_201_CREATED)


class ExperimentResultsView(SpecAPIView):
    """One run's results, a row per trial, in the run's variant order then by repeat."""

    @extend_schema(summary="Results of one run (the latest by default)", parameters=[RUN_PARAM],
                   responses={200: ser.ResultsSerializer, 400: ERRORS, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        runs = selectors.experiment_runs(experiment=experiment)
        run_number = _positive_int_param(request, "run")
        if run_number is None:
            run_number = runs[0] if runs else None
        rows = selectors.experiment_results(experiment=experiment, run_number=run_number) if run_number else []
        return Response({"run_number": run_number, "runs": runs,
                         "results": ser.TrialRowSerializer(rows, many=True, context={"request": request}).data})


class ExperimentTrialsView(SpecAPIView, GenericAPIView):
    """All trials of the experiment, newest run first."""

    serializer_class = ser.TrialRowSerializer

    @extend_schema(summary="Trials of the experiment, newest run first", parameters=[
        OpenApiParameter("run", int, description="Only this run's trials.")],
        responses={200: ser.TrialRowSerializer(many=True), 400: ERRORS, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        trials = selectors.experiment_trials(experiment=experiment, run_number=_positive_int_param(request, "run"))
        page = self.paginate_queryset(trials)
        return self.get_paginated_response(_rows(page, request))


# ---- trials -------------------------------------------------------------------------------------------------
class TrialDetailView(SpecAPIView):
    """One trial: the figures of the results table plus everything the engine measured."""

    @extend_schema(summary="One trial: its figures and full summary",
                   responses={200: ser.TrialDetailSerializer, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        trial = selectors.trial_get_for(user=request.user, code=code)
        return Response(_trial_body(trial, request))


def _trial_body(trial, request: Request) -> dict:
    row = {**selectors.trial_result_row(trial), "experiment": trial.experiment.code,
           "html_url": request.build_absolute_uri(trial.get_absolute_url()), "queue": trial.queue,
           "cancel_requested": trial.cancel_requested, "summary": trial.summary}
    return ser.TrialDetailSerializer(row, context={"request": request}).data


class TrialWindowsView(SpecAPIView):
    """The trial's per-second windows (what the live page plots)."""

    @extend_schema(summary="The trial's per-second windows", parameters=[
        OpenApiParameter("after", int, description="Only windows with a larger index (for polling).")],
        responses={200: ser.WindowsSerializer, 400: ERRORS, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        trial = selectors.trial_get_for(user=request.user, code=code)
        windows = selectors.trial_windows(trial, after_index=_positive_int_param(request, "after"))
        return Response(ser.WindowsSerializer({"trial": trial.code, "status": trial.status, "windows": windows}).data)


class TrialCancelView(SpecAPIView):
    """Cancel one trial: at once when queued; a running trial stops within 2 s."""

    @extend_schema(summary="Cancel a trial (a running one stops within 2 s)", request=None,
                   responses={200: ser.TrialDetailSerializer, 404: NOT_FOUND})
    def post(self, request: Request, code) -> Response:
        trial = services.trial_cancel(trial=selectors.trial_get_for(user=request.user, code=code))
        return Response(_trial_body(trial, request))


# ---- capacity at the SLO -------------------------------------------------------------------------------------
def _capacity_body(search, request: Request) -> dict:
    from .capacity import bracket

    row = {"code": search.code, "experiment": search.experiment.code, "variant": search.variant_name,
           "probes_experiment": search.probes_experiment.code if search.probes_experiment_id else None,
           "simulated": search.simulated, "budget": search.budget, "probe_s": search.probe_s,
           "tolerance": search.tolerance, "status": search.status, "progress": search.progress, "stage": search.stage,
           "estimate_rps": search.estimate_rps, "bracket_rps": bracket(search.probes or []),
           "probes": search.probes or [], "result": search.result, "error": search.error, "created": search.created,
           "started_at": search.started_at, "finished_at": search.finished_at,
           "url": reverse("api-capacity-detail", kwargs={"code": search.code}),
           "html_url": request.build_absolute_uri(search.get_absolute_url())}
    return ser.CapacitySearchSerializer(row).data


class ExperimentCapacityView(SpecAPIView):
    """Capacity at the SLO of one variant: POST starts a search (its probes are trials of the experiment
    "<name> capacity <variant>"); GET lists the experiment's searches, newest first."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(summary="The experiment's capacity searches", responses={200: ser.CapacitySearchSerializer(many=True),
                                                                          404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        searches = experiment.capacity_searches.filter(owner=request.user).select_related(
            "experiment", "probes_experiment")[:100]
        return Response([_capacity_body(s, request) for s in searches])

    @extend_schema(summary="Start a capacity search of one variant", request=ser.CapacityRequest,
                   responses={202: ser.CapacitySearchSerializer, 400: ERRORS, 404: NOT_FOUND})
    def post(self, request: Request, code) -> Response:
        from .capacity import capacity_start

        experiment = selectors.experiment_get_for(user=request.user, code=code)
        body = _object_body(request, allowed=("variant", "simulated", "budget", "probe_s", "tolerance"))
        search = capacity_start(experiment=experiment, user=request.user, options=body)
        data = _capacity_body(search, request)
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})


class CapacityDetailView(SpecAPIView):
    @extend_schema(summary="One capacity search: progress, probes and result",
                   responses={200: ser.CapacitySearchSerializer, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        return Response(_capacity_body(selectors.capacity_get_for(user=request.user, code=code), request))


class CapacityCancelView(SpecAPIView):
    @extend_schema(summary="Cancel a capacity search (a running one stops with its current probe)", request=None,
                   responses={200: ser.CapacitySearchSerializer, 404: NOT_FOUND})
    def post(self, request: Request, code) -> Response:
        from .capacity import capacity_cancel

        search = capacity_cancel(search=selectors.capacity_get_for(user=request.user, code=code))
        return Response(_capacity_body(search, request))


# ---- catalogues ---------------------------------------------------------------------------------------------
class PriceListView(APIView):
    """The dated price catalogue (read-only here; staff edit it on the Prices page)."""

    @extend_schema(summary="The price catalogue used for costs", responses=ser.PriceEntrySerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(ser.PriceEntrySerializer(selectors.price_list(), many=True).data)


# ---- the compare basket -------------------------------------------------------------------------------------
def _pins_body(request: Request) -> dict:
    pins = list(selectors.pins_for(user=request.user))
    return ser.PinListSerializer({"html_url": request.build_absolute_uri(reverse("compare-pinned")),
                                  "count": len(pins), "pins": pins}, context={"request": request}).data


class PinListView(SpecAPIView):
    """Your compare basket: trials pinned from any run or experiment, to open on one comparison page."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(summary="Your pinned trials", responses={200: ser.PinListSerializer})
    def get(self, request: Request) -> Response:
        return Response(_pins_body(request))

    @extend_schema(summary="Pin a trial (pinning it again changes nothing)", request=ser.PinRequest,
                   responses={201: ser.PinListSerializer, 200: ser.PinListSerializer, 400: ERRORS, 404: NOT_FOUND})
    def post(self, request: Request) -> Response:
        body = _object_body(request, allowed=("trial",))
        if "trial" not in body:
            raise S.SpecError([S.FieldError("trial", "is required: the code of one of your trials")])
        trial = selectors.trial_get_for(user=request.user, code=body["trial"])
        _, created = services.pin_add(user=request.user, trial=trial)
        return Response(_pins_body(request), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(summary="Unpin one trial, or every trial when none is named", parameters=[
        OpenApiParameter("trial", OpenApiTypes.UUID, description="The trial to unpin (default: all of them).")],
        request=None, responses={200: ser.UnpinResponseSerializer, 404: NOT_FOUND})
    def delete(self, request: Request) -> Response:
        code = request.query_params.get("trial")
        if code:
            trial = selectors.trial_get_for(user=request.user, code=code)
            return Response({"unpinned": int(services.pin_remove(user=request.user, trial=trial))})
        return Response({"unpinned": services.pins_clear(user=request.user)})


# ---- the comparison ------------------------------------------------------------------------------------------
class ExperimentComparisonView(SpecAPIView):
    """Every variant of one run side by side: combined repeats, verdicts, costs (re-priced on request), deltas
    against a baseline, the Pareto front, a recommendation and the chart series. The comparison page and the
    reports read the same selector (`controlplane.experiments.comparison`)."""

    @extend_schema(summary="Compare the variants of one run (the latest by default)", parameters=[
        RUN_PARAM,
        OpenApiParameter("baseline", str, description="Row key (the variant name) to compare against (default: "
                                                      "the always-on variant, else the first)."),
        OpenApiParameter("price", str, description="Price entry name or id: re-bill every trial from its stored "
                                                   "spans (default: the costs as billed when each trial ran)."),
        OpenApiParameter("charts", bool, description="false: leave out the chart series (default true)."),
    ], responses={200: ser.ComparisonSerializer, 400: ERRORS, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        experiment = selectors.experiment_get_for(user=request.user, code=code)
        charts = request.query_params.get("charts", "true").strip().lower()
        if charts not in ("true", "false", "1", "0"):
            raise S.SpecError([S.FieldError("charts", "must be true or false")])
        data = comparison.experiment_comparison(
            experiment=experiment, run=_positive_int_param(request, "run"),
            baseline=request.query_params.get("baseline") or None, price=request.query_params.get("price") or None,
            charts=charts in ("true", "1"))
        return Response(ser.ComparisonSerializer(data).data)
