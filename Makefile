# The front door: `make run` and `make test` work on a fresh Debian machine.
# They install what is missing (Mosquitto through apt-get, the Python packages into .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed
CONFIG ?= config/dev.toml
# `make run`: the simulated store's devices, a simulated cloud and a lunch service (orders, cooks).
# Without them: make run RUN_FLAGS=   (or RUN_FLAGS=--simulate for the devices alone)
RUN_FLAGS ?= --simulate --sim-cloud --sim-orders

.PHONY: run test screenshots soak bench native system-deps deps lint image-check clean

system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_passwd >/dev/null 2>&1 || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || missing="$$missing keepalived"; \
	command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing="$$missing iproute2"; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing="$$missing fonts-wqy-microhei"; \
	[ -f /usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf ] || missing="$$missing fonts-symbola"; \
	if [ "$(WITH_BROWSER)" = 1 ]; then command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; fi; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	pkg-config --exists fuse3 2>/dev/null || missing="$$missing pkg-config libfuse3-dev fuse3"; \
	command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /sbin/mkfs.ext4 ] || missing="$$missing e2fsprogs"; \
	command -v losetup >/dev/null 2>&1 || [ -x /sbin/losetup ] || missing="$$missing mount"; \
	if [ "$(WITH_CHRONY)" = 1 ]; then [ -x /usr/sbin/chronyd ] || command -v chronyd >/dev/null 2>&1 || missing="$$missing chrony"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# pip's and the build backend's chatter goes to a log, shown only when the install fails.
$(STAMP): pyproject.toml | system-deps
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@echo "installing the Python packages into $(VENV) (log: $(VENV)/pip.log)"
	@{ $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[test]'; } > $(VENV)/pip.log 2>&1 \
		|| { cat $(VENV)/pip.log; echo "pip install failed (log above, kept in $(VENV)/pip.log)"; exit 1; }
	@touch $@

deps: system-deps $(STAMP)

# SIM picks real units' habits for the simulated devices, e.g.
#   make run SIM="scale=cas-jin scanner=hid-report-id"   (slots and profiles: docs/devices.md)
run: deps
	$(PY) -m edgehub run --config $(CONFIG) $(RUN_FLAGS) $(foreach p,$(SIM),--sim-profile $(p))

# The kitchen screen and the box's page are tested in a real headless Chromium (Debian's), the
# store's time server with a real chronyd on loopback ports (Debian's chrony, which the box image
# installs too; on a desktop it takes over from systemd-timesyncd).
# The suite mostly waits on brokers, hubs and sockets, so it runs in TEST_JOBS processes (one test
# file each at a time); TEST_JOBS=0 runs it in one process. A test that fails is run once more and
# named in the summary as rerun; one that fails twice fails the run. Screenshots go to
# test-artifacts/ (tests/browser.py).
TEST_JOBS ?= 3
test: WITH_BROWSER = 1
test: WITH_CHRONY = 1
test: deps native
	$(PY) -m pytest -q -rR --reruns 1 $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)

# The reviewed screenshots kept in git (artifacts/, see .gitignore), refreshed from the browser tests.
screenshots: WITH_BROWSER = 1
screenshots: deps
	EDGEHUB_ARTIFACTS=$(CURDIR)/artifacts $(PY) -m pytest -q $$(grep -rl --include='*.py' 'screenshot(' tests | grep -v '^tests/browser.py$$')

# Long runs kept out of `make test`: the power-cut test with a 2-minute store run and 3,000 cuts;
# the kitchen screens tapped 100 times each (1,200 taps); twenty takeovers in a row of a pair of
# boxes (root for its network namespaces; docs/pair.md).
soak: WITH_BROWSER = 1
soak: deps native
	EDGEHUB_SOAK=1 $(PY) -m pytest -q tests/powercut
	EDGEHUB_KDS_TAPS=100 $(PY) -m pytest -q tests/kitchen/test_kds_browser.py -k taps
	$(PY) -m pytest -q -m soak tests/pair

# Native helpers: the Pi profile's SD-card sync shim (LD_PRELOAD) for the benches, and the
# recorded disk of the power-cut tests (FUSE).
native: build/libsdcard.so build/cutdisk

build/libsdcard.so: bench/native/sdcard.c
	@mkdir -p build
	cc -O2 -Wall -Wextra -shared -fPIC -o $@ $< -ldl -lm

build/cutdisk: tests/powercut/cutdisk.c
	@mkdir -p build
	cc -O2 -Wall -Wextra $$(pkg-config --cflags fuse3) -o $@ $< $$(pkg-config --libs fuse3)

# `make bench PROFILE=pi`: every bench with the box at a Raspberry Pi 4's speed and an SD card's
# syncs (bench/piprofile.py; root and the cgroup v1 cpu controller).
bench: deps native
	$(PY) bench/run_all.py $(if $(PROFILE),--profile $(PROFILE))

lint: deps
	$(PY) -m ruff check edgehub drivers tests bench
	$(PY) -m mypy edgehub drivers

image-check: deps
	$(SUDO) PYTHON=$(abspath $(PY)) bash image/check.sh

clean:
	rm -rf .run build dist *.egg-info
