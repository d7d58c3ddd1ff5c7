"""`create_app(settings)`: the FastAPI application, with storage and services wired in."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware

from fhir_server.analytics.indicators import shipped_indicators
from fhir_server.api.analytics import (
    build_analytics_router,
    build_deid_analytics_router,
    build_deid_measure_router,
    build_measure_router,
    register_analytics_operations,
    register_measure_operations,
)
from fhir_server.api.audit_http import AuditMiddleware
from fhir_server.api.bulk import build_bulk_router, register_bulk_operations
from fhir_server.api.cgm_submit import RECEIVER, SUBMIT_OPERATION, build_cgm_submit_router
from fhir_server.api.clinical import build_clinical_router, register_clinical_operations
from fhir_server.api.cohorts import build_cohort_router, register_cohort_operations
from fhir_server.api.convert import CONVERT_OPERATION, build_convert_router
from fhir_server.api.fast_lane import install_fast_lane
from fhir_server.api.head import HeadAsGet
from fhir_server.api.http import fhir_response
from fhir_server.api.limits import RequestBudget
from fhir_server.api.memory import MemoryTrim
from fhir_server.api.metadata import build_metadata_router
from fhir_server.api.nightscout import build_nightscout_router
from fhir_server.api.rest import build_router, register_rest_operations
from fhir_server.api.rights import build_rights_router, register_rights_operations
from fhir_server.api.subscriptions import (
    BaseUrl,
    build_subscription_router,
    register_subscription_operations,
    start_worker,
)
from fhir_server.api.terminology import build_terminology_router, register_operations
from fhir_server.api.ui import build_ui_router
from fhir_server.api.validate import build_validate_router, register_validate_operation
from fhir_server.api.view_export import build_view_export_router, register_view_export_operation
from fhir_server.auth import install_auth
from fhir_server.gc_tuning import tune_for_server
from fhir_server.model.outcome import FhirError, Issue, outcome
from fhir_server.search.errors import SearchError
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from fhir_server.storage.cursor import CursorError
from fhir_server.subscriptions.websocket import Hub
from profiles import load_search_parameters

log = logging.getLogger("diatabase")

GZIP_MINIMUM_BYTES = 1024
HTTP_ISSUE_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly"}


def create_app(settings: Settings | None = None, service: FhirService | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    if service is None:
        service = FhirService(open_storage(settings.db_url), settings)
    cohorts = _build_cohorts(service, settings)
    jobs = _build_jobs(service, settings, cohorts)
    deid = _build_deid(service, settings, jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await run_in_threadpool(_seed_terminology, service)
        tune_for_server()  # the registry, validators and terminology are built by now
        jobs.start()  # jobs queued or running when the server last stopped run again
        # events left undelivered when the server last stopped go out now
        worker = app.state.subscription_worker = start_worker(app)
        yield
        if worker is not None:
            await run_in_threadpool(worker.stop)
        await run_in_threadpool(jobs.stop)
        cohorts.store.close()
        if deid is not None:
            deid.close()
        service.storage.close()

    # API docs where FastAPI users look for them (/docs: Swagger UI, /redoc: ReDoc), with
    # their scripts and styles served from the installed fastapi-offline package rather
    # than a CDN: hospital networks are often offline.
    app = FastAPIOffline(
        title="Diatabase FHIR R4 server",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
        static_url="/docs-static",
        # no badge fetched from the online validator
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.settings = settings
    app.state.fhir = service
    app.add_middleware(RequestBudget, limits=settings.limits)
    app.add_middleware(MemoryTrim)
    # Operations for the CapabilityStatement: resource type (or "*" for system level) ->
    # [(name, OperationDefinition url)].
    app.state.operations = {"*": [CONVERT_OPERATION, SUBMIT_OPERATION]}
    register_operations(app.state.operations)
    register_rest_operations(app.state.operations)
    app.state.instantiates = [RECEIVER]  # the HL7 CGM IG's data receiver ($submit-cgm-bundle)
    app.state.deid = deid
    app.state.jobs = jobs
    app.state.cohorts = cohorts
    register_bulk_operations(app.state.operations)
    register_cohort_operations(app.state.operations)
    register_rights_operations(app.state.operations)
    app.state.erasure = _build_erasure(service, settings, jobs)
    app.state.transparency = _build_transparency(service, settings, deid, jobs)
    register_subscription_operations(app.state.operations)
    app.state.subscription_base = BaseUrl(settings.base_url)
    app.state.subscription_websockets = Hub()
    install_auth(app, settings)
    # Added after (so outside) authorization. Responses of 1 KiB and more are gzipped for
    # clients that accept it (level 6 costs half of level 9's time for 1 % more bytes);
    # streamed bodies are flushed chunk by chunk. HEAD runs as GET outside it all, so its
    # headers are the GET's and authorization sees a read.
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES, compresslevel=6)
    app.add_middleware(HeadAsGet)
    # Outermost of the project's middlewares: it sees every answer, refusals included.
    app.add_middleware(AuditMiddleware, trail=service.audit)

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError) -> Response:
        return fhir_response(exc.to_outcome(), exc.status, exc.headers or None)

    @app.exception_handler(SearchError)
    async def search_error(request: Request, exc: SearchError) -> Response:
        expression = (exc.expression,) if exc.expression else ()
        body = outcome([Issue("error", exc.code, exc.message, expression)])
        return fhir_response(body, 400)

    @app.exception_handler(CursorError)
    async def cursor_error(request: Request, exc: CursorError) -> Response:
        return fhir_response(outcome([Issue("error", "invalid", str(exc))]), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_ISSUE_CODES.get(exc.status_code, "processing")
        message = str(exc.detail)
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 404:
            message = f"Nothing at {request.url.path}"
        return fhir_response(outcome([Issue("error", code, message)]), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> Response:
        return fhir_response(outcome([Issue("error", "invalid", "Malformed request")]), 400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # The details stay in the server log; the client gets no stack trace.
        log.exception("Unexpected error on %s %s", request.method, request.url.path)
        body = outcome([Issue("fatal", "exception", "Internal server error; see the server log")])
        return fhir_response(body, 500)

    if deid is not None:
        from fhir_server.api.deid import build_deid_metadata_router, build_deid_router

        app.include_router(build_deid_analytics_router())  # before /deid/{type}/{id}
        app.include_router(build_view_export_router(research=True))
        app.include_router(build_deid_measure_router())
        app.include_router(build_deid_router())
    if settings.deid_only:
        # Research-only deployment: no identifying route at all; /metadata tells the truth.
        app.include_router(build_deid_metadata_router("/metadata"))
        return app
    publish_conformance_resources(service)
    register_validate_operation(app)
    register_clinical_operations(app)
    register_analytics_operations(app)
    register_view_export_operation(app)
    register_measure_operations(app)
    app.include_router(build_metadata_router())
    # Before the generic /{type}/{id} routes, which would take `$lookup` or `$validate`
    # for an id: FastAPI matches in order.
    app.include_router(build_terminology_router())
    app.include_router(build_validate_router())
    app.include_router(build_convert_router())  # before the generic /{resource_type} routes
    app.include_router(build_nightscout_router())
    app.include_router(build_cgm_submit_router())
    app.include_router(build_bulk_router())
    app.include_router(build_cohort_router())
    app.include_router(build_rights_router())  # before the generic /{type}/{id} routes
    app.include_router(build_subscription_router())
    app.include_router(build_clinical_router())
    app.include_router(build_ui_router())
    app.include_router(build_analytics_router())
    app.include_router(build_view_export_router())
    app.include_router(build_measure_router())
    app.include_router(build_router())
    # The hot interactions (read, search, create, operations at a fixed path) skip
    # FastAPI's walk through every router above; the route is the one it would choose.
    install_fast_lane(app)
    return app


def _seed_terminology(service: FhirService) -> None:
    """Shipped CodeSystems, ValueSets and ConceptMaps stored if absent, stored ValueSets and
    ConceptMaps registered; a failure is logged and the server still serves its data."""
    try:
        service.terminology.seed(service.resources)
    except Exception:
        log.exception("terminology resources could not be stored or registered at start")


def publish_conformance_resources(service: FhirService) -> None:
    """Store the profiles and their SearchParameters (with their own ids) so that they read
    and search like any resource. A PUT of unchanged content adds no version."""
    resources = [*service.profiles.published_structure_definitions(),
                 *load_search_parameters(), *shipped_indicators()]
    for resource in resources:
        service.resources.update(resource["resourceType"], resource["id"], resource)


def _build_erasure(service: FhirService, settings: Settings, jobs: Any) -> Any:
    """$expunge: the store, and the copies beside it (job files, view stores, cohorts)."""
    from fhir_server.jobs import default_jobs_dir
    from fhir_server.rights.erasure import Erasure
    from fhir_server.rights.holds import Holds, holds_path

    return Erasure(
        service, Holds(holds_path(settings)), jobs.store, settings.deid_views or None,
        default_jobs_dir(settings) / "cohorts.db", settings.views_dir or None,
    )


def _build_transparency(service: FhirService, settings: Settings, deid: Any, jobs: Any) -> Any:
    from fhir_server.rights.transparency import Transparency

    return Transparency(service, deid, jobs.store, settings.transparency_refresh_seconds)


def _build_cohorts(service: FhirService, settings: Settings) -> Any:
    """Cohort definitions (Groups with `actual` false) and their snapshots, kept beside
    the job store."""
    from fhir_server.analytics.cohort_store import CohortStore
    from fhir_server.analytics.cohorts import Cohorts
    from fhir_server.jobs import default_jobs_dir

    return Cohorts(service, CohortStore(default_jobs_dir(settings) / "cohorts.db"))


def _build_jobs(service: FhirService, settings: Settings, cohorts: Any) -> Any:
    """The job runner (bulk export and import; the de-identified export registers its own
    kind); a Group's members come from the Group or from its cohort snapshots."""
    from fhir_server.analytics.groups import GroupMembers
    from fhir_server.jobs.setup import build_runner

    return build_runner(service, settings, GroupMembers(service, cohorts))


def _build_deid(service: FhirService, settings: Settings, jobs: Any) -> Any:
    """The de-identification facade when a recipients file is configured (required by
    --deid-only); None otherwise."""
    if not settings.deid_recipients:
        if settings.deid_only:
            from fhir_server.deid.keys import DeidConfigError

            raise DeidConfigError("--deid-only needs a recipients file (--deid-recipients)")
        return None
    from fhir_server.deid.context import build_deid

    return build_deid(service, settings, jobs)
