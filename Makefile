# Two commands on a fresh machine: `make run` and `make test`. Everything else is a detail.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < requirements.lock | cut -d' ' -f1)
PYTEST_ARGS ?=
# The PostgreSQL suite runs in this many test processes (pytest-xdist), each with its own test
# database and Redis database; 1 runs it in one process.
TEST_PROCESSES ?= 2

.PHONY: run test bench lint install system-deps lock clean

$(STAMP): requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv
	@$(BIN)/uv pip sync -q -p $(BIN)/python requirements.lock
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# PostgreSQL, Redis and Chromium for the tests, from Debian's packages when they are missing.
system-deps:
	@bin/system-deps

run: install
	@$(BIN)/python bin/run-embedded

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy inbox

test: install system-deps lint
	@echo "== whole suite against PostgreSQL and Redis =="
	bin/with-services -- $(BIN)/pytest $(if $(filter-out 1,$(TEST_PROCESSES)),-n $(TEST_PROCESSES)) $(PYTEST_ARGS)
	@echo "== smoke subset against SQLite and the embedded broker =="
	env -u DATABASE_URL -u CELERY_BROKER_URL INBOX_VAR_DIR=$$(mktemp -d) $(BIN)/pytest -m smoke -q $(PYTEST_ARGS)

bench: install system-deps
	bin/with-services -- $(BIN)/python -m bench

# Re-pin after changing pyproject.toml: everything (requirements.lock) and the image's subset.
lock: install
	$(BIN)/uv pip compile pyproject.toml --group dev --python-version 3.11 -o requirements.lock -q
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 -c requirements.lock -o requirements.prod.lock -q

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .mypy_cache .ruff_cache
