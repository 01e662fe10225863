# fhirpanel in one image, two process commands:
#   fhirpanel serve    the review API and dashboard (the default command; health check on /healthz)
#   fhirpanel worker   the scheduler: incremental refreshes, the nightly full refresh, Subscriptions
#
# Build:   docker build -t fhirpanel .
# API:     docker run -d --name fhirpanel-api -p 8000:8000 -v fhirpanel-data:/var/lib/fhirpanel \
#            --env-file fhirpanel.env fhirpanel
# Worker:  docker run -d --name fhirpanel-worker --no-healthcheck \
#            -v fhirpanel-data:/var/lib/fhirpanel --env-file fhirpanel.env fhirpanel fhirpanel worker
# Check:   docker run --rm --env-file fhirpanel.env fhirpanel fhirpanel check-server https://ehr/fhir
#
# Settings come from FHIRPANEL_<SECTION>_<KEY> variables (fhirpanel.example.toml lists them all) or a
# mounted file named by FHIRPANEL_CONFIG. Secrets (tokens, the SMART private key, a PostgreSQL URL
# with a password) belong in the environment or in mounted files (fhir.token_file,
# fhir.smart_key_file), never in the image. The worker answers no HTTP health check (hence
# --no-healthcheck); it listens only for Subscription notifications (scheduler.hook_*).

# ---- build: a virtual environment with fhirpanel and its runtime dependencies (no dev extras)
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fhirpanel/ fhirpanel/
# The postgres extra lets FHIRPANEL_DATABASE_URL name a PostgreSQL store; SQLite needs nothing.
RUN python -m venv /opt/fhirpanel \
 && /opt/fhirpanel/bin/pip install ".[postgres]"

# ---- runtime
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/fhirpanel/bin:$PATH \
    FHIRPANEL_MAPPINGS_DIR=/opt/fhirpanel/mappings \
    FHIRPANEL_DATABASE_URL=sqlite:////var/lib/fhirpanel/fhirpanel.db \
    FHIRPANEL_API_HOST=0.0.0.0 \
    FHIRPANEL_API_PORT=8000
RUN groupadd --system --gid 10001 fhirpanel \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fhirpanel \
        --shell /usr/sbin/nologin fhirpanel \
 && mkdir -p /var/lib/fhirpanel \
 && chown fhirpanel:fhirpanel /var/lib/fhirpanel
COPY --from=build /opt/fhirpanel /opt/fhirpanel
# Code lists, weights, tiers, templates: data read at start (fhirpanel/tables). An installed
# package cannot find them beside itself, so FHIRPANEL_MAPPINGS_DIR points here.
COPY mappings/ /opt/fhirpanel/mappings/
# The state store (SQLite by default) and any working files (var/) live on the volume.
WORKDIR /var/lib/fhirpanel
VOLUME ["/var/lib/fhirpanel"]
USER 10001:10001
EXPOSE 8000
# No curl in the slim image: Python's urllib, which fails on a refused connection or an HTTP error.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FHIRPANEL_API_PORT', '8000') + '/healthz', timeout=4)"]
CMD ["fhirpanel", "serve"]
