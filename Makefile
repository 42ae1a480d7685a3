# The two commands of the README. Both set the machine up first (scripts/setup.sh, idempotent).
.PHONY: setup demo test

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/d2a-demo --source samples --save out/demo --no-display

test: setup
	.venv/bin/python -m pytest -q -rs
