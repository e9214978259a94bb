# loyalcast: the two commands of the quick start, and a few helpers.
#   make demo   create .venv, install, create and seed the embedded database, run campaigns,
#               measure the balance reminder's lift
#   make test   install test dependencies (and Debian's chromium for browser tests), make
#               sure PostgreSQL and Redis are up, lint
#               (ruff check, ruff format --check, mypy --strict), run the suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOYALCAST := $(BIN)/loyalcast
DEMO_MEMBERS ?= 5000
FIFTEEN_DAYS_AGO := import datetime as d; print((d.datetime.now(d.UTC) - d.timedelta(days=15)).strftime('%Y-%m-%dT08:00Z'))

.PHONY: demo test lint install services browser clean-demo bench bench-small bench-web bench-console bench-ledger bench-ledger-10m

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(LOYALCAST) db upgrade
	$(LOYALCAST) demo seed --members $(DEMO_MEMBERS)
	@# The balance reminder ran 15 days ago (08:00 UTC is daytime from Kaliningrad to
	@# Vladivostok), so its 14-day window is over when `lift` measures it.
	$(LOYALCAST) run balance_reminder --now $$($(BIN)/python -c "$(FIFTEEN_DAYS_AGO)")
	$(LOYALCAST) run points_expiring
	$(LOYALCAST) run win_back
	$(LOYALCAST) demo outcomes
	$(LOYALCAST) lift balance_reminder
	@echo "Messages are in var/outbox/; ask why a member got (or did not get) one: $(LOYALCAST) why 2"

# PostgreSQL and Redis on 127.0.0.1: started when down (CI and this project's machines
# have both installed; on a laptop without them the tests that need them are skipped,
# except under CI=true where they fail).
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || \
	  (command -v pg_ctlcluster >/dev/null && pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start) || \
	  echo "PostgreSQL is not running and could not be started here"
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
	  (command -v redis-server >/dev/null && redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
	     --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log) || \
	  echo "Redis is not running and could not be started here"
	@for i in 1 2 3 4 5 6 7 8 9 10; do \
	  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0; sleep 1; \
	done; echo "waited 10 s for PostgreSQL and Redis"

# Headless Chromium for the web service's browser tests: Debian's chromium and
# chromium-driver, installed when missing (CI runs as root on Debian).
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
	  ( command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    ( apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      ( apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null ) ) ) || \
	  echo "chromium and chromium-driver are missing and could not be installed here"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) services browser lint
	$(BIN)/python -m pytest

# Benchmarks against PostgreSQL and Redis on this machine (see bench/README.md).
bench: $(BENCH_STAMP) services
	$(BIN)/python bench/run.py --members 1000000

bench-small: $(BENCH_STAMP) services
	$(BIN)/python bench/run.py --members 100000

# The web service: delivery-report ingestion, the unsubscribe page under 100 clients.
bench-web: $(BENCH_STAMP) services
	$(BIN)/python bench/web.py

clean-demo:
	rm -rf var/

# The console: pages over a ledger of a million rows, lift over a million-member occasion.
bench-console: $(BENCH_STAMP) services
	$(BIN)/python bench/console.py --members 1000000

# The ledger: planning against its floor, over a month of history, retention, pruning.
bench-ledger: $(BENCH_STAMP) services
	$(BIN)/python bench/ledger.py --members 1000000

bench-ledger-10m: $(BENCH_STAMP) services
	$(BIN)/python bench/ledger.py --members 10000000 --skip-history --skip-floor --repeats 1
