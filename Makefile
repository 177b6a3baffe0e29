# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# fonts-ipafont-gothic: Japanese glyphs for the live view's Japanese screenshots
SYSTEM_PACKAGES := mosquitto mosquitto-clients socat openssl influxdb victoria-metrics chromium chromium-driver fonts-ipafont-gothic faketime

.PHONY: demo test system-packages bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Installs what the tests and the demo need from Debian when run as root;
# otherwise says exactly what to install.
system-packages:
	@missing=""; \
	for cmd in mosquitto mosquitto_sub mosquitto_passwd socat openssl influxd victoria-metrics chromium chromedriver faketime; do \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$cmd"; \
	done; \
	fc-list :lang=ja 2>/dev/null | grep -q . || missing="$$missing a-Japanese-font"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(SYSTEM_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing. Install them with: sudo apt-get install -y $(SYSTEM_PACKAGES)"; exit 1; \
	  fi; \
	fi

# The demo needs nothing but Python: without Mosquitto it uses an embedded broker.
demo: $(STAMP)
	$(BIN)/jcm demo $(DEMO_ARGS)

# Three test processes: most tests wait on servers, sockets and timeouts, not on the CPU
# (~3.6 CPU-minutes in ~13 minutes run one at a time). Tests that need the reference sites'
# fixed Modbus ports share one process (xdist_group "reference-ports").
test: system-packages $(STAMP)
	$(BIN)/pytest -q -n 3 --dist loadgroup $(PYTEST_ARGS)

bench: system-packages $(STAMP)
	$(BIN)/python bench/polling_throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache
