# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

MEDPLUM_DIR   := tests/interop/medplum
MEDPLUM_STAMP := $(MEDPLUM_DIR)/node_modules/.fhirpanel-installed

.PHONY: demo test lint typecheck venv clean bench medplum hapi hapi-jar mutation

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The main job on the embedded default: a local sandbox FHIR server seeded with the committed
# synthetic population, one full `fhirpanel run` against it, a summary on the terminal.
demo: $(STAMP)
	$(BIN)/fhirpanel demo

# Medplum's FHIR router for the interop suite (tests/interop/medplum): pinned in its
# package-lock.json, installed once per lock file.
medplum: $(MEDPLUM_STAMP)

$(MEDPLUM_STAMP): $(MEDPLUM_DIR)/package-lock.json $(MEDPLUM_DIR)/package.json
	@command -v npm >/dev/null 2>&1 || { echo "need node and npm (Node.js >= 20) on PATH"; exit 2; }
	cd $(MEDPLUM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	sha256sum $(MEDPLUM_DIR)/package-lock.json | cut -d' ' -f1 > $@

# A HAPI FHIR JPA server (8.8.0, in-memory H2) for the interop suite (tests/interop/hapi): the
# jar is built by Maven into tests/interop/hapi/target, again only when its sources change
# (Maven's cache: ~/.m2). `make hapi` serves it on 127.0.0.1:8080 until Ctrl-C.
hapi-jar: $(STAMP)
	$(BIN)/python -m tests.interop.hapi_server --build-only

hapi: $(STAMP)
	$(BIN)/python -m tests.interop.hapi_server --port 8080

test: $(STAMP) medplum hapi-jar lint typecheck
	$(BIN)/pytest -q

# Fails on any finding: lint rules and unformatted code (the tree is kept `ruff format`ted).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy fhirpanel

bench: $(STAMP)
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/ingest.py

# Mutation testing of the pure domain (mutmut 3, the `mutation` extra; settings in pyproject's
# [tool.mutmut]): every mutant of fhirpanel/domain against tests/unit only, then the score per
# module (tools/mutation_report.py; excluded mutants in tests/mutation-exclusions.toml). Not part
# of `make test` or CI: 4,934 mutants, 21 minutes from scratch on two cores. Results stay in
# mutants/ and a rerun only tests what changed; `make mutation MUTANTS='fhirpanel.domain.tiers*'`
# reruns one module.
MUTATION_STAMP := $(VENV)/.mutation-installed
MUTATION_JOBS  ?= 2
MUTANTS        ?=

$(MUTATION_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,mutation]'
	@touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP)
	$(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(BIN)/python tools/mutation_report.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info mutants
