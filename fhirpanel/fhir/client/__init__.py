"""HTTP access to a FHIR R4 server: auth, retries with backoff, paging, HTTP errors as exceptions.

Built on `requests` with a urllib3 `Retry` mounted on the session. `FhirClient.request` is the one
place an HTTP status becomes an exception (`error_for_response`). Messages and logs carry resource
ids and URLs (long id lists shortened to a count), never request bodies, resource content or
credentials.

One module per job: `rest` (the client: sending, reads, searches, writes), `auth` (credentials),
`retries` (backoff and the retry budget), `http_errors` (statuses and OperationOutcomes as
exceptions), `links` (redaction, origins, following server links) and `paging` (searchset page
checks and the tally against `total`). Callers import from here.
"""

from fhirpanel.fhir.client.auth import (
    AuthProvider,
    BasicAuth,
    BearerAuth,
    NoAuth,
    auth_from_settings,
    secret_setting,
)
from fhirpanel.fhir.client.http_errors import error_for_response, outcome_messages, token_refused
from fhirpanel.fhir.client.links import (
    Origin,
    next_link,
    parse_origins,
    redact_url,
    resolve_link,
    url_origin,
)
from fhirpanel.fhir.client.paging import (
    SearchPage,
    SearchParams,
    SearchTally,
    checked_page,
    count_only,
    entry_mode,
)
from fhirpanel.fhir.client.rest import FHIR_JSON, FhirClient, RequestStats
from fhirpanel.fhir.client.retries import (
    IDEMPOTENT_METHODS,
    POST_RETRY_STATUSES,
    RETRY_STATUSES,
    BudgetedRetry,
    RetryListener,
    build_retry,
)

__all__ = [
    "FHIR_JSON",
    "IDEMPOTENT_METHODS",
    "POST_RETRY_STATUSES",
    "RETRY_STATUSES",
    "AuthProvider",
    "BasicAuth",
    "BearerAuth",
    "BudgetedRetry",
    "FhirClient",
    "NoAuth",
    "Origin",
    "RequestStats",
    "RetryListener",
    "SearchPage",
    "SearchParams",
    "SearchTally",
    "auth_from_settings",
    "build_retry",
    "checked_page",
    "count_only",
    "entry_mode",
    "error_for_response",
    "next_link",
    "outcome_messages",
    "parse_origins",
    "redact_url",
    "resolve_link",
    "secret_setting",
    "token_refused",
    "url_origin",
]
