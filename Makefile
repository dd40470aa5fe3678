# Two commands on a fresh clone: `make demo` and `make test`. Each first sets up the virtual
# environment .venv (tools/setup_env.sh: created when missing, the torch build for this machine,
# a quick check when nothing is missing), then runs in it.
#   make install                          only the environment
#   make demo ARGS="--max_epoch_aiib2023=4"  python demo.py, with ARGS passed on
#   make test ARGS="-k config"            python -m pytest tests -q, with ARGS passed on
#   make test ARGS="tests/test_config.py" the files named in ARGS instead of all of tests/
PYTHON := .venv/bin/python
ARGS ?=
# pytest's paths: those ARGS names under tests/, else the whole folder.
TEST_PATHS = $(if $(filter tests/% ./tests/%,$(ARGS)),,tests)

.PHONY: install demo test

install:
	bash tools/setup_env.sh

demo: install
	$(PYTHON) demo.py $(ARGS)

test: install
	$(PYTHON) -m pytest $(strip $(TEST_PATHS) -q $(ARGS))
