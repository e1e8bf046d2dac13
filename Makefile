# soc-pipeline: the two commands a fresh Debian 12 machine needs (as root): `make up` and `make test`.
PYTHON ?= /usr/bin/python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# postgresql-15 for the tests' throwaway servers; the rest is what the control node of the Ansible topology
# needs itself (the roles install what each host needs): Debian's python3 with psycopg and cryptography
# for the modules, acl to become postgres, openssl for the vault, btrfs-progs, vagrant to validate the
# Vagrantfile.
APT_PACKAGES := python3 python3-venv python3-dev build-essential git postgresql-15 python3-psycopg \
	python3-cryptography acl openssl btrfs-progs vagrant
INVENTORY ?= ansible/inventories/local
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible/ansible.cfg
DAY    ?= 2016-08-01
SCALE  ?= 0.001

.PHONY: up test deps venv vault lint unit infra provision bench clean jenkins-golden acceptance infra-tests \
	acceptance-tests unit-beside topology-tests topology-chain

# Debian packages the project needs; installs only what is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The byte code is compiled on every core, and not for the test suites the packages ship or the Ansible
# collections the roles do not use (15,000 of the 23,700 files): pip compiling everything took 101 s here,
# installing without it and then this 35 + 22 s.
NOT_COMPILED := /tests?/|/ansible_collections/(?!ansible/posix/|community/(postgresql|crypto|general)/)
$(BIN)/soc: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 -x '$(NOT_COMPILED)' $(VENV)/lib
	@touch $@

venv: $(BIN)/soc

# Provision the one-machine topology and run the main job on it.
up: provision
	cd ansible && $(PROFILE) ansible-playbook -i $(CURDIR)/$(INVENTORY) replay.yml -e replay_date=$(DAY) -e replay_scale=$(SCALE)

# The inventory's vault and its password file (ansible.cfg names it: every ansible command reads it),
# made on this machine with random passwords unless they exist (ansible/bin/make-vault).
vault: venv
	ansible/bin/make-vault $(INVENTORY)

# Every host of the inventory, by ansible-playbook site.yml; each task's time as it ends, the slowest
# tasks and the run's time at the end.
PROFILE := ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks,ansible.posix.timer
provision: vault
	cd ansible && $(PROFILE) ansible-playbook -i $(CURDIR)/$(INVENTORY) site.yml -e soc_pipeline_catalogue_scale=$(SCALE)

lint: vault
	$(BIN)/ruff check .
	$(BIN)/mypy pipeline
	$(BIN)/yamllint --strict .
	ansible-lint

# A module's tests on one worker: its module-scoped fixtures (simulated days, reduced databases) made once,
# not once per worker (alone here: 292 s against 318 s).
unit: venv
	$(BIN)/pytest -n auto --dist loadfile

# The provisioned topology: testinfra on every host, services, replication, privileges, idempotence.
infra: provision
	$(MAKE) --no-print-directory infra-tests

# The acceptance features (features/, steps/) on the provisioned local topology, as root; Jenkins publishes
# reports/cucumber.json and reports/acceptance.xml (and reports/compare-*.html).
acceptance: provision
	$(MAKE) --no-print-directory acceptance-tests

# The whole suite: the unit tests from the start, at a low CPU priority (UNIT_NICE), beside the topology's
# chain: the linters while the topology is provisioned, then the topology's tests, and every acceptance
# scenario last (they fail over and switch the primary back), on the small telemetry sets (within the CI
# budget; the full-size sets: `make acceptance`, Jenkins' acceptance job). The chain is the longer one and
# leaves part of the CPU idle all along (pip's downloads, the one-core schema migration, the scenarios'
# waits for the environments): the unit tests, with throwaway servers of their own, fill it and take little
# from the chain. The linters' and the provisioning's output is shown as each ends; the topology's suites
# print as they go, the unit tests into reports/unit.log (its summary shown when they end).
UNIT_NICE ?= 10
test: vault
	$(MAKE) --no-print-directory -j2 unit-beside topology-chain ACCEPTANCE_SIZE=small

# With the kernel's autogroup scheduling every session shares the CPU as one group whatever the nice of its
# processes (the topology's servers and services run in sessions of their own): the unit tests get a session
# whose group has UNIT_NICE (/proc/self/autogroup), and their throwaway servers its priority too
# (pipeline/db/server.py).
unit-beside: venv
	@mkdir -p reports
	@echo "unit tests at nice $(UNIT_NICE) beside the topology's chain: reports/unit.log"
	@setsid --wait sh -c 'echo $(UNIT_NICE) 2>/dev/null > /proc/self/autogroup; \
	  exec nice -n $(UNIT_NICE) $(MAKE) --no-print-directory unit' > reports/unit.log 2>&1; \
	  status=$$?; echo "unit tests:"; tail -n 12 reports/unit.log; exit $$status

# The linters while the topology is provisioned, then its suites.
topology-chain:
	$(MAKE) --no-print-directory --output-sync=target -j2 lint provision
	$(MAKE) --no-print-directory topology-tests

# One after the other (each line its own make: never side by side, whatever -j the caller gave).
topology-tests:
	$(MAKE) --no-print-directory infra-tests
	$(MAKE) --no-print-directory acceptance-tests

# The suites of a topology that is already provisioned.
infra-tests:
	$(BIN)/pytest tests/infra --hosts=ansible://all --ansible-inventory=$(INVENTORY)

# ACCEPTANCE_SIZE: the telemetry sets' size, full or small (steps/telemetry.py); ACCEPTANCE_SELECT: a
# pytest -k expression, to run some scenarios only.
ACCEPTANCE_SIZE ?= full
ACCEPTANCE_SELECT ?=
acceptance-tests:
	mkdir -p reports
	$(BIN)/pytest steps --telemetry-size=$(ACCEPTANCE_SIZE) $(if $(ACCEPTANCE_SELECT),-k "$(ACCEPTANCE_SELECT)") \
		--cucumberjson=reports/cucumber.json --junitxml=reports/acceptance.xml

# The Jenkins jobs' golden XML (jenkins/golden/), after an intended change of jenkins/: review git diff jenkins/golden
jenkins-golden: venv
	jenkins/render --update-golden

bench: venv
	$(MAKE) --no-print-directory deps APT_PACKAGES=postgresql-15-q3c
	$(BIN)/python bench/bench_telemetry.py
	$(BIN)/python bench/bench_transits.py
	$(BIN)/python bench/bench_simulate.py
	$(BIN)/python bench/bench_image_params.py
	$(BIN)/python bench/bench_crossmatch.py
	$(BIN)/python bench/bench_load.py
	$(BIN)/python bench/bench_alerts_scan.py
	$(BIN)/python bench/bench_compare.py

clean:
	rm -rf var build dist *.egg-info
