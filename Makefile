# `make train` and `make test` set up .venv on first use (Python >= 3.10 needed).
# The environment is installed from uv.lock, exactly as the test suite last passed with it:
# `make setup` never re-resolves; `make lock` does (then run `make test` and commit uv.lock).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv
export UV_PYTHON_DOWNLOADS := never
# Installed packages are compiled to bytecode once (~15 s): where PYTHONDONTWRITEBYTECODE is set,
# every process would otherwise compile torch's and Hydra's modules again as it imports them, and
# the test suite's hundreds of subprocesses took 1.6x as long (fresh clones, 2 cores: 12.6 min against 7.7-8.1).
export UV_COMPILE_BYTECODE := 1

.PHONY: setup lock train test test-slow lint bench-batching bench-loader bench-ds2 bench-vs-speechbrain bench-gpu gpu-wheels clean

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools/uv uv==$(UV_VERSION)

# Every extra: the test suite exercises them all (MLflow, W&B, ONNX, SentencePiece, ...). Run before
# every command (under a second when nothing changed), so an environment changed by hand is repaired.
setup: | $(UV)
	$(UV) sync --frozen --all-extras --python $(PYTHON) --quiet

lock: $(UV)  ## re-resolve every dependency to the newest allowed versions (a deliberate upgrade)
	$(UV) lock --upgrade --python $(PYTHON)
	$(UV) sync --frozen --all-extras --python $(PYTHON) --quiet

train: setup  ## the default recipe; pass overrides as ARGS="trainer.max_epochs=3"
	$(PY) -m framework.train $(ARGS)

# Two pytest workers: most of the suite's time is subprocesses starting (imports, config
# composition), which two workers overlap on 2 cores (665 s -> 515-616 s over five fresh clones; the
# slowest on a day when training epochs also ran ~12% slower). TEST_WORKERS=0: serial.
# Each worker builds its own session fixtures (the synthetic corpora, one_epoch_run): seconds.
TEST_WORKERS ?= 2

test: setup  ## lint, then the test suite (slow cases excluded)
	$(VENV)/bin/ruff check framework recipes tests benchmarks
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

lint: setup
	$(VENV)/bin/ruff check framework recipes tests benchmarks

bench-batching: setup
	$(PY) -m benchmarks batching

bench-loader: setup
	$(PY) -m benchmarks loader

bench-ds2: setup  ## e.g. ARGS="trainer.device=cuda trainer.precision=bf16 --sweep-batch 32,64,128"
	$(PY) -m benchmarks ds2 $(ARGS)

# SpeechBrain and lhotse beside the framework (not dependencies), for vs-speechbrain and batching.
SB_SITE ?= /tmp/sbpkgs
SB_PKGS := speechbrain==1.1.2 lhotse==1.33.0 hyperpyyaml ruamel.yaml ruamel.yaml.clib joblib cloudpickle \
	sentencepiece huggingface_hub audioread cytoolz toolz intervaltree sortedcontainers tabulate click requests \
	urllib3 idna certifi charset_normalizer

$(SB_SITE)/speechbrain:
	$(UV) pip install --quiet --no-deps --python $(PY) --target $(SB_SITE) $(SB_PKGS)

bench-vs-speechbrain: setup $(SB_SITE)/speechbrain  ## e.g. ARGS="--corpora speech --seeds 0,1,2 --threads 1"
	PYTHONPATH=.:$(SB_SITE) $(PY) -m benchmarks vs-speechbrain $(ARGS)

# A bare GPU machine (Python 3.12, torch and torchaudio 2.11, no network) lacks these; `make gpu-wheels`
# fetches them here into .whl/ (ignored), `make bench-gpu` there installs them without a network and runs
# every GPU check: the report lands in $(GPU_OUT)/ (report.md, report.json, gpu.log).
WHEELS := .whl
WHEEL_SITE ?= /tmp/framework-site
GPU_OUT ?= runs/gpu-check
PY312 := --only-binary=:all: --python-version 3.12 --implementation cp
MANYLINUX := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

gpu-wheels:
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(PYTHON) -m pip download --quiet --no-deps $(PY312) $(MANYLINUX) -d $(WHEELS) \
		"hydra-core==1.3.*" "omegaconf==2.3.*" "soundfile>=0.12" cffi pycparser
	$(PYTHON) -m pip download --quiet --no-deps $(PY312) --platform manylinux_2_24_x86_64 -d $(WHEELS) "bitsandbytes>=0.45"
	$(PYTHON) benchmarks/slim_wheel.py $(WHEELS)/bitsandbytes-*.whl cuda130  # the GPU machine's CUDA 13.0 only: 43 -> 4 MB
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(WHEELS) "antlr4-python3-runtime==4.9.3"  # PyPI has only its sdist; pure Python
	ls -l $(WHEELS)

bench-gpu:  ## on the GPU machine, no setup: ARGS="--budget-s 540", GPU_OUT=$$OUT
	test ! -d $(WHEELS) || $(PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
		--upgrade --target $(WHEEL_SITE) $(WHEELS)/*.whl
	PYTHONPATH=$(WHEEL_SITE):. PYTHONUNBUFFERED=1 $(PYTHON) -m benchmarks gpu --out $(GPU_OUT) $(ARGS)

clean:
	rm -rf runs multirun outputs .pytest_cache
