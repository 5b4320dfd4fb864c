#!/usr/bin/env bash
# The README's test command: set up .venv with the test extras, then run the whole suite on CPU
# (8 fake devices, generated data, no network). Extra arguments go to pytest; test paths narrow the run.
# FASTSLOW_REFERENCE=1 also installs the test-only references of the weight importers
# (requirements/reference*.txt).
FASTSLOW_EXTRAS=test FASTSLOW_REFERENCE=1 source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
# the whole suite unless the arguments name test paths (e.g. `bash launch/test.sh tests/serving -x`)
target=tests
for arg in "$@"; do
  case "$arg" in tests|tests/*) target= ;; esac
done
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout=900 --durations=25 $target "$@"
