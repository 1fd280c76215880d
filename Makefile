# The two commands of the README:
#   make demo   install, train Mask R-CNN on the embedded data, evaluate it, save pictures
#   make test   install, run the tests (all tiers; CI runs it)
# and, for the edit-test loop, make test-fast: the unit tier (no test that trains)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.instseg-installed
DEMO_CONFIG ?= configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml
DEMO_OUT ?= output/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast benchmark cuda-check clean

install: $(STAMP)

# Re-runs only when what it installs from changes; every step is itself idempotent.
$(STAMP): Makefile requirements.txt setup.py third_party/detectron2/install.py \
		third_party/detectron2/pb1-detectron2-0.6.patch $(shell find csrc -type f)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) third_party/detectron2/install.py
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	touch $@

demo: install
	$(PY) projects/train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUT)
	$(PY) projects/demo.py --config-file $(DEMO_CONFIG) --input datasets/shapes/val \
		--max-images 8 --output $(DEMO_OUT)/pictures --opts MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

benchmark: install
	$(PY) -m benchmark speed

# Compile-only build of the CUDA kernels (no GPU needed), so CUDA code cannot rot unseen.
cuda-check: install
	FORCE_CUDA=1 CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} \
		$(PY) setup.py -q build_ext --build-temp build/cuda-check/tmp --build-lib build/cuda-check/lib

clean:
	rm -rf build output $(VENV)
