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
# INSTSEG_SYSTEM_TORCH=1 make install: keep the machine's torch/torchvision (a venv that sees the
# system site-packages; requirements.txt without those two pins) and build the extension against it.
# INSTSEG_WHEELHOUSE=DIR: install from the wheels in DIR only (no index), e.g. one `make wheelhouse` made.
INSTSEG_SYSTEM_TORCH ?=
INSTSEG_WHEELHOUSE ?=
WHEELHOUSE ?= wheelhouse
SYSTEM_TORCH := $(filter 1,$(INSTSEG_SYSTEM_TORCH))
# a stamp per setting, so that switching INSTSEG_SYSTEM_TORCH reinstalls
STAMP := $(VENV)/.instseg-installed$(if $(SYSTEM_TORCH),-system-torch)
REQUIREMENTS := $(if $(SYSTEM_TORCH),$(VENV)/requirements-system-torch.txt,requirements.txt)
PIP_ENV := $(if $(INSTSEG_WHEELHOUSE),PIP_NO_INDEX=1 PIP_FIND_LINKS=$(abspath $(INSTSEG_WHEELHOUSE)))
SHOW_TORCH := "import torch, torchvision; print('kept torch', torch.__version__, torch.__file__, 'torchvision', torchvision.__version__)"
D2_ARGS := $(if $(INSTSEG_WHEELHOUSE),--wheelhouse $(abspath $(INSTSEG_WHEELHOUSE)))

.PHONY: install wheelhouse demo test test-fast benchmark cuda-check clean

install: $(STAMP)

# Re-runs only when what it installs from changes; every step is itself idempotent.
$(STAMP): Makefile requirements.txt setup.py third_party/detectron2/install.py tools/requirements.py \
		third_party/detectron2/pb1-detectron2-0.6.patch $(shell find csrc -type f)
	test -x $(PY) || $(PYTHON) -m venv $(if $(SYSTEM_TORCH),--system-site-packages) $(VENV)
	$(if $(SYSTEM_TORCH),$(PY) tools/requirements.py requirements.txt --without torch torchvision > $(REQUIREMENTS))
	$(if $(SYSTEM_TORCH),$(PY) -c $(SHOW_TORCH))
	$(PIP_ENV) $(PY) -m pip install -q -r $(REQUIREMENTS)
	$(PIP_ENV) $(PY) third_party/detectron2/install.py $(D2_ARGS)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	rm -f $(VENV)/.instseg-installed*
	touch $@

# The wheels `INSTSEG_WHEELHOUSE=$(WHEELHOUSE) INSTSEG_SYSTEM_TORCH=1 make install` needs on a machine
# without the registries: our detectron2 wheel and every other requirement but torch/torchvision, for
# this machine's Python and platform. WHEELHOUSE_DEPS=0: the detectron2 wheel only (a small carry).
wheelhouse: install
	$(PY) third_party/detectron2/install.py --wheelhouse $(WHEELHOUSE) --wheel-only
	$(if $(filter 0,$(WHEELHOUSE_DEPS)),,$(PY) tools/requirements.py requirements.txt --without torch torchvision > $(WHEELHOUSE)/requirements.txt)
	$(if $(filter 0,$(WHEELHOUSE_DEPS)),,$(PY) -m pip wheel -q -w $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt $(WHEELHOUSE)/pb1_detectron2-*.whl)

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
