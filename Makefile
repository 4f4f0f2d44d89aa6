# monai-mtlmad: `make demo` and `make test` set everything up themselves (Python 3.11, CPU is enough).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo task-check compare-hard test test-slow test-notebooks test-monailabel benchmark benchmark-quality profile-step clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: an open range would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

DEMO_DATA := runs/demo_data
DEMO_RUN := runs/demo
BUNDLE := $(BIN)/python -W ignore -m monai.bundle run --bundle_root bundle --dataset_dir $(DEMO_DATA) --output_dir $(DEMO_RUN)

# The main job: generate the phantom demo data (BMAD layout), train the bundle, evaluate on the test split,
# print the metrics beside their trivial baselines (the fast mode and the full mode), and write a map for every test
# image in its own pixel grid (in the mode inference chooses: the fast one when it kept the full mode's quality).
# Leaves runs/demo/ with metrics.json, scores.csv, overlays/, maps/ (per image: _map.npy, _map.png, _overlay.png),
# models/model.pt (self-describing: evaluation and inference need nothing else) and TensorBoard logs; a rerun
# moves the earlier results to runs/demo/previous/.
# About 7.5 minutes on 2 CPU cores (2 of them distilling the fast mode). Valid holds 16 normals; 16 training normals
# are held out for calibration.
demo: $(STAMP)
	$(BIN)/python -c "from monai_mtlmad.data import make_demo_dataset; make_demo_dataset('$(DEMO_DATA)', 2, n_train=80, n_valid=32)"
	$(BUNDLE) --config_file bundle/configs/train.json --max_epochs 20 --val_interval 10 --rim 0.06 --fast_steps 1000 --overwrite true
	$(BUNDLE) --config_file bundle/configs/evaluate.json --fast true
	$(BIN)/python -W ignore -m monai.bundle run --bundle_root bundle --config_file bundle/configs/evaluate.json \
		--dataset_dir $(DEMO_DATA) --model_path $(DEMO_RUN)/models/model.pt --output_dir $(DEMO_RUN)/full_mode --fast false
	$(BIN)/python scripts/print_metrics.py $(DEMO_RUN)/metrics.json $(DEMO_RUN)/full_mode/metrics.json
	$(BIN)/python -W ignore -m monai.bundle run --bundle_root bundle --config_file bundle/configs/inference.json \
		--model_path $(DEMO_RUN)/models/model.pt --dataset_dir $(DEMO_DATA)/test --output_dir $(DEMO_RUN)/maps --overwrite true

# Each proxy task's held-out figure against its chance level, and the routing of the experts.
task-check: $(STAMP)
	$(BIN)/python scripts/check_tasks.py --steps 400 --size 128 --shared --output runs/task_check

# Image scores, map weights and the denoising task on the harder generated sets (heads, chest CT), three seeds,
# through the bundle; writes runs/hard/results.{json,md}. About 10 minutes per run on 2 CPU cores (12 runs).
compare-hard: $(STAMP)
	$(BIN)/python scripts/compare_on_hard_sets.py --root runs/hard --seeds 0 1 2

# the slowest tests are listed at the end: the default run must stay under CI's 20 minutes on 2 cores
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not notebooks" --durations=15

# the research scripts' tests (hard-set comparison with its studies, quality benchmark): about 5 minutes; CI runs it
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=5

# The tutorials in notebooks/, executed top to bottom by a Jupyter kernel of .venv (about 6 minutes on 2 CPU
# cores); notebook 04 starts a MONAI Label server when .venv-monailabel exists (CI runs this after test-monailabel).
# Executed copies, with their pictures, are left in runs/notebooks/executed/.
NB_STAMP := $(VENV)/.notebooks
$(NB_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[test,notebooks]"
	touch $(NB_STAMP)

test-notebooks: $(NB_STAMP)
	$(BIN)/python -m pytest -q tests/test_notebooks.py --durations=4

# The MONAI Label app in its own environment: MONAI Label needs torchvision, and PyPI's torchvision does not import
# beside the CPU torch 2.13.0 of .venv; torch 2.14.1 and torchvision 0.29.1 install together here (a large CUDA
# build, 5.5 GB, that runs on the CPU). Starts real servers on 127.0.0.1 (about 10 minutes on 2 CPU cores).
ML_VENV := .venv-monailabel
ML_STAMP := $(ML_VENV)/.installed
$(ML_STAMP): setup.py
	$(PYTHON) -m venv $(ML_VENV)
	$(ML_VENV)/bin/pip install --quiet --upgrade pip
	$(ML_VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(ML_VENV)/bin/pip install --quiet -e ".[test,monailabel]"
	touch $(ML_STAMP)

# Keeps the measured latencies and a picture of one answer under runs/monailabel/.
test-monailabel: $(ML_STAMP)
	mkdir -p runs/monailabel
	MTLMAD_LATENCY_JSON=runs/monailabel/latency.json MTLMAD_PICTURE=runs/monailabel/answer.png \
		MTLMAD_PICTURE_3D=runs/monailabel/answer_3d.png \
		$(ML_VENV)/bin/python -m pytest -q tests/test_monailabel_app.py

# Training throughput, scoring latency/throughput (full and fast mode) and peak memory, 2D 256x256 and 3D 128^3,
# each beside a plain MONAI UNet measured in the same run. About 10 minutes on 2 CPU cores (the full-mode volume
# alone takes 2). On a GPU: add --device cuda --amp --train_batch 64 --score_batch 256.
benchmark: $(STAMP)
	$(BIN)/python benchmarks/speed.py --json benchmarks/results/speed_cpu.json --markdown benchmarks/results/speed_cpu.md

# Detection quality at an equal training budget (1.5 min per method, 2 seeds): MTL-MAD through the bundle, its ablation
# (shared block, each task alone), from-scratch peers (autoencoder, Kascenas' denoising autoencoder, a DRAEM-style
# segmenter) and the trivial scores, on the demo data and the harder generated heads. About 50 minutes per dataset on
# 2 CPU cores. On a BMAD folder: $(BIN)/python benchmarks/quality.py /data/BMAD/BraTS2021 --minutes 30 --seeds 0 1 2
HARD_HEADS := runs/hard/data/head
benchmark-quality: $(STAMP)
	$(BIN)/python -c "from monai_mtlmad.data import make_demo_dataset; make_demo_dataset('$(DEMO_DATA)', 2, n_train=80, n_valid=32)"
	$(BIN)/python -c "from monai_mtlmad.data import make_demo_dataset; make_demo_dataset('$(HARD_HEADS)', 2, n_train=80, n_valid=32, n_test=48, size=128, seed=100, anatomy='head', hard=True)"
	$(BIN)/python -W ignore benchmarks/quality.py $(DEMO_DATA) --minutes 1.5 --seeds 0 1 --rim 0.06 \
		--output benchmarks/results/quality_demo --plot benchmarks/results/quality_demo.png
	$(BIN)/python -W ignore benchmarks/quality.py $(HARD_HEADS) --minutes 1.5 --seeds 0 1 --rim 0.06 \
		--output benchmarks/results/quality_hard_heads --plot benchmarks/results/quality_hard_heads.png

# Where a training step spends its time (task views, network parts, backward, optimiser; top operators).
profile-step: $(STAMP)
	$(BIN)/python benchmarks/profile_step.py --json benchmarks/results/profile_step_cpu.json

clean:
	rm -rf $(VENV) $(ML_VENV) runs
