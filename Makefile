# monai-mtlmad: `make demo` and `make test` set everything up themselves (Python 3.11, CPU is enough).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow benchmark clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: an open range would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

# Until the detector and bundle exist, the demo trains the multi-task learner on generated phantoms and reports,
# per task, a held-out figure against its chance level (what the learner can honestly show today).
demo: $(STAMP)
	$(BIN)/python scripts/check_tasks.py --steps 200 --size 96 --output runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

benchmark: $(STAMP)
	$(BIN)/python scripts/benchmark_step.py

clean:
	rm -rf $(VENV) runs
