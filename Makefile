# Two entry points that work on a fresh machine with only python3:
#   make demo   install into .venv; convert the shipped ResNet-style model for a PCM chip,
#               evaluate it (ideal vs onnxruntime, chips over drift time), calibrate, re-evaluate,
#               fine-tune the weights under one-year device noise and evaluate that; run the
#               example design-space sweep (examples/sweep.toml) on Dask and plot it
#   make test   install into .venv, run the whole test suite (slow tests included)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
XBAR   := $(VENV)/bin/xbar
STAMP  := $(VENV)/.xbar-installed
OUT    := build

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	@mkdir -p $(OUT)
	$(XBAR) convert models/resnet_bn.onnx -o $(OUT)/resnet_bn.xbar --crossbar 128x128 \
		--hardware pcm --calib-data models/digits_calib.npz --force
	$(XBAR) info $(OUT)/resnet_bn.xbar
	$(XBAR) eval $(OUT)/resnet_bn.xbar --data models/digits_test.npz --reference models/resnet_bn.onnx \
		--seeds 0-4 --drift 1s,1d,1y
	$(XBAR) calibrate $(OUT)/resnet_bn.xbar --data models/digits_calib.npz --seed 0 --drift 1d \
		-o $(OUT)/resnet_bn.calibrated.xbar --force
	$(XBAR) eval $(OUT)/resnet_bn.calibrated.xbar --data models/digits_test.npz
	$(XBAR) finetune $(OUT)/resnet_bn.xbar --data models/digits_train.npz --drift 1y --epochs 3 \
		-o $(OUT)/resnet_bn.finetuned.xbar --force
	$(XBAR) eval $(OUT)/resnet_bn.finetuned.xbar --data models/digits_test.npz --seeds 0-4 --drift 1y
	$(XBAR) sweep examples/sweep.toml -o $(OUT)/sweep --force
	$(XBAR) plot $(OUT)/sweep -o $(OUT)/sweep.png

test: install
	$(PY) -m pytest -n 2 -q

test-fast: install
	$(PY) -m pytest -n 2 -q -m "not slow"

bench: install
	$(PY) benchmarks/bench_ideal.py

clean:
	rm -rf $(OUT) .pytest_cache
