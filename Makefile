# Two entry points do all setup on a fresh machine:
#   make demo   - a demo game with auditing on (SQLite, 127.0.0.1), a scripted player, the trail printed
#   make test   - the whole suite on Python 3.11/Evennia 5.x and Python 3.12/Evennia 6.x
# Everything is built under .venv/ and .build/ (both git-ignored); `make clean` removes them.

PY311 ?= python3.11
PY312 ?= python3.12
export PYENV_VERSION ?= 3.12.1:3.11.7
# Suites that start real servers (a game, rsyslogd, a tmpfs) are opt-in in a user's game; here they run.
export AUDITING_TEST_SERVERS ?= 1
BUILD := $(CURDIR)/.build
TESTS ?= auditing

.PHONY: test test-py311 test-py312 user-py311 user-py312 demo demo-stop bench bench-room clean system-deps

test: system-deps .venv/py311/.installed .venv/py312/.installed
	@rm -f $(BUILD)/*/summary
	@# The two interpreters side by side (each run's output is shown whole when it ends), then a
	@# new user's game on each: `evennia test auditing` with nothing but `pip install` of the package.
	@status=0; \
	$(MAKE) --no-print-directory -j2 --output-sync=target test-py311 test-py312 || status=1; \
	$(MAKE) --no-print-directory -j2 --output-sync=target user-py311 user-py312 || status=1; \
	cat $(BUILD)/*/summary | awk '{p+=$$1; f+=$$2} END {printf "tests: %d passed, %d failed\n", p, f}'; \
	exit $$status

# rsyslogd is a real peer of the syslog tests (started and stopped by the tests themselves).
system-deps:
	@command -v rsyslogd >/dev/null 2>&1 || command -v /usr/sbin/rsyslogd >/dev/null 2>&1 || \
	  { echo "installing rsyslog (Debian package) for the syslog tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsyslog >/dev/null; }

.venv/%/.installed: pyproject.toml
	@tools/mkvenv "$*" "$(if $(filter py311,$*),$(PY311),$(PY312))" .venv/$*
	@touch $@

test-py311: system-deps .venv/py311/.installed
	@tools/run-tests .venv/py311 $(BUILD)/py311 $(TESTS)

test-py312: system-deps .venv/py312/.installed
	@tools/run-tests .venv/py312 $(BUILD)/py312 $(TESTS)

# A new user's game: a fresh virtualenv with only `pip install` of the package and the README's settings.
user-py311: system-deps
	@tools/user-game $(PY311) $(BUILD)/user-py311

user-py312: system-deps
	@tools/user-game $(PY312) $(BUILD)/user-py312

demo: .venv/py311/.installed
	@.venv/py311/bin/python -m auditing.demo run --dir $(CURDIR)/demo

demo-stop:
	@.venv/py311/bin/python -m auditing.demo stop --dir $(CURDIR)/demo

bench: .venv/py311/.installed
	@.venv/py311/bin/python bench/bench.py

# Two real games side by side, 20 telnet players in one room, auditing off vs on (about 3 minutes).
# BENCH_PY=py312 for Python 3.12 / Evennia 6; BENCH_ROOM_ARGS="--profile 20" adds a py-spy profile.
BENCH_PY ?= py311
bench-room: .venv/$(BENCH_PY)/.installed
	@.venv/$(BENCH_PY)/bin/python bench/busy_room.py $(BENCH_ROOM_ARGS)

clean:
	rm -rf .venv .build demo
