# `make run` starts the app on the embedded defaults; `make test` runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

HOST ?= 127.0.0.1
PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python
# The second test run uses real services (CI starts them; see .ci/run).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

# Django 6.1 needs Python >= 3.12: try what is on PATH, then every pyenv version.
define FIND_PYTHON
ok() { "$$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }; \
for c in python3.14 python3.13 python3.12 python3; do \
  if ok "$$c"; then command -v "$$c"; exit 0; fi; \
done; \
if command -v pyenv >/dev/null 2>&1; then \
  for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' | sort -rV); do \
    p=$$(PYENV_VERSION=$$v pyenv which python3 2>/dev/null) && ok "$$p" && { echo "$$p"; exit 0; }; \
  done; \
fi; \
exit 1
endef

.PHONY: help venv run run-scaled migrate test test-embedded test-services lint format check-deploy run-fake

help:
	@echo "make run    - set up and start the app on http://$(HOST):$(PORT) (SQLite, demo provider)"
	@echo "make test   - set up and run lint, migration check and the whole test suite (twice)"

$(VENV)/.installed: requirements.txt
	@python=$$( $(FIND_PYTHON) ) || { \
	  echo "No Python >= 3.12 found. Install one (e.g. 'pyenv install 3.13' or your OS's python3.13) and retry." >&2; \
	  exit 1; }; \
	echo "Using $$python ($$($$python --version))"; \
	[ -x $(PY) ] || "$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

venv: $(VENV)/.installed

migrate: venv
	$(PY) manage.py migrate --no-input -v 0

run: migrate
	@$(PY) manage.py bootstrap_demo
	@$(PY) manage.py collectstatic --no-input -v 0
	@echo ""
	@echo "  Chat is running at http://$(HOST):$(PORT)/"
	@echo "  Sign in as: $${DEMO_USER:-demo} / $${DEMO_PASSWORD:-demo-password}"
	@echo "  API key:    $(PY) manage.py create_api_key --org demo-org   (docs at /api/docs)"
	@echo ""
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) chatproject.asgi:application

# Two daphne instances + a Celery worker and beat on PostgreSQL and Redis (see README).
run-scaled: export DATABASE_URL ?= $(TEST_DATABASE_URL)
run-scaled: export REDIS_URL ?= $(TEST_REDIS_URL)
run-scaled: export PROMETHEUS_MULTIPROC_DIR ?= $(CURDIR)/var/prometheus
run-scaled: migrate
	@mkdir -p var && rm -rf var/prometheus
	@$(PY) manage.py bootstrap_demo
	@$(PY) manage.py collectstatic --no-input -v 0
	@echo "  Instances: http://127.0.0.1:8001/ and http://127.0.0.1:8002/ (DATABASE_URL=$$DATABASE_URL)"
	$(VENV)/bin/honcho start

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run -v 0

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

check-deploy: venv
	DEBUG=false SECRET_KEY=$$(head -c 48 /dev/urandom | base64) ALLOWED_HOSTS=chat.example.com \
	  $(PY) manage.py check --deploy --fail-level WARNING

test-embedded: venv
	env -u DATABASE_URL -u REDIS_URL $(VENV)/bin/pytest -q

# On real PostgreSQL + Redis. Outside CI it is skipped with a notice when they are down.
test-services: venv
	@if $(PY) -c "import socket,sys; [socket.create_connection(a, 1).close() for a in (('127.0.0.1', 5432), ('127.0.0.1', 6379))]" 2>/dev/null; then \
	  echo "== tests on PostgreSQL + Redis"; \
	  DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(VENV)/bin/pytest -q; \
	elif [ -n "$$CI" ]; then echo "PostgreSQL or Redis is not running" >&2; exit 1; \
	else echo "== PostgreSQL/Redis not running: skipped the second run (see README)"; fi

test: lint check-deploy
	@echo "== tests on the embedded defaults (SQLite, in-memory channel layer)"
	$(MAKE) --no-print-directory test-embedded
	$(MAKE) --no-print-directory test-services
