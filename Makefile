# Firezone on Twisted. `make demo` and `make test` work on a fresh Debian 12 machine as root.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Debian packages the suite and the benchmarks need (real peers, kernel tooling, PostgreSQL).
DEB_PACKAGES := postgresql coturn wireguard-go wireguard-tools iperf3 nftables iproute2 \
	iputils-ping tcpdump ethtool python3-bpfcc bpfcc-tools linux-headers-amd64 netsniff-ng \
	procps psmisc curl nginx
BCC_LINK := .bcc-path/bcc
DEB_BCC := /usr/lib/python3/dist-packages/bcc

.PHONY: help deps venv test lint mypy bench bench-quick demo clean packaging

help:
	@echo "make demo   - install what is needed and run portal, relay, gateway and client locally"
	@echo "make test   - install what is needed and run the whole suite (tox: py311, lint, mypy, packaging)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - run every benchmark in bench/ (JSON on the last line of each)"

# Idempotent and quiet when everything is present: apt runs only for missing packages.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to install:" $$missing >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,dev]' --config-settings editable_mode=compat
	@touch $@

# Debian's bcc module is built for Debian's python3; a folder holding only a link to it
# makes it importable from the venv without pulling in the rest of dist-packages.
$(BCC_LINK):
	@mkdir -p .bcc-path
	@if [ -d $(DEB_BCC) ]; then ln -sfn $(DEB_BCC) $(BCC_LINK); fi

venv: $(VENV)/.installed $(BCC_LINK)
	@site=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	echo "$(CURDIR)/.bcc-path" > $$site/firezone-bcc.pth

test: deps venv
	$(VENV)/bin/tox run -e py311,lint,mypy,packaging

lint: venv
	$(VENV)/bin/ruff check firezone twisted tests bench setup.py
	$(VENV)/bin/mypy firezone twisted/plugins

# The benchmarks (bench/<name>.py); helpers in bench/ start with an underscore or are scripts
# the benchmarks run inside the lab.
BENCHES := relay tunnel connect portal

bench: deps venv
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(VPY) bench/$$b.py || exit 1; done

bench-quick: deps venv
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(VPY) bench/$$b.py --quick || exit 1; done

demo: deps venv
	$(VPY) -m firezone.demo

clean:
	rm -rf .tox build dist *.egg-info _trial_temp .bcc-path
