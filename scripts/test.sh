#!/usr/bin/env bash
# Installs everything the test suite needs, then runs it.
# This is the README's test command, and what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch: the CPU build (a plain `torch` would pull a multi-GB CUDA build).
# pyproject's range admits GPU builds; the CPU pin lives only here.
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check -c scripts/test-constraints.txt \
  -e ".[trainer,report,argo,nwb,ray,dev]"
# Optional parity oracle for the NLB metrics; its pandas pin has no Python 3.11
# wheel, so it is installed without dependencies (evaluation.py needs none of them).
# Its wheel also installs a top-level `tests` package that could shadow ours: remove it.
if "$PY" -m pip install -q --disable-pip-version-check --no-deps "nlb-tools==0.0.4"; then
  "$PY" - <<'PYEOF'
import shutil
from importlib.metadata import distribution
dist = distribution("nlb-tools")
for f in dist.files or []:
    if f.parts[0] == "tests":
        shutil.rmtree(dist.locate_file("tests"), ignore_errors=True)
        break
PYEOF
fi
# Katib's published models, only for tests: the generated api.v1.beta1 module
# (tests/test_katib_proto.py compares our stubs with it) and the Experiment
# models (render's round-trip check). kubeflow-katib pins protobuf < 5, which
# conflicts with ours, so both come without their dependencies.
"$PY" -m pip install -q --disable-pip-version-check --no-deps \
  "kubeflow-katib==0.19.0" "kubeflow-katib-api==0.19.0"
# Types are part of the check (mypy is in the dev extra). It takes about 30 s
# of one core, so it runs while pip downloads the wheelhouse below (about as
# long, mostly resolving against the index); its output comes after.
mypy_log=$(mktemp)
"$PY" -m mypy >"$mypy_log" 2>&1 &
mypy_pid=$!
trap 'kill "$mypy_pid" 2>/dev/null || true; rm -f "$mypy_log"' EXIT
# Wheels of every extra's dependencies (pip's cache makes this quick), so that
# tests/test_extras_install.py can install each extra alone in a fresh virtual
# environment without the network.
extras=$("$PY" -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))
print(",".join(k for k in d["project"]["optional-dependencies"] if k != "dev"))')
"$PY" -m pip download -q --disable-pip-version-check -d .cache/wheelhouse \
  -c scripts/test-constraints.txt "torch==2.13.0" ".[$extras]" "setuptools>=68" wheel
# Lint and format are part of the check (ruff is in the dev extra).
"$PY" -m ruff check --quiet .
"$PY" -m ruff format --check --quiet .
if ! wait "$mypy_pid"; then
  cat "$mypy_log" >&2
  exit 1
fi
cat "$mypy_log"
# Two workers, each taking whole test files (a file's module fixtures, such as
# its Ray cluster or finished search, are then made once): most end-to-end
# tests wait on subprocesses and sockets about as much as they compute, so two
# at a time fit two cores. AUTOLFADS_TEST_WORKERS=0 runs in this process alone.
workers=${AUTOLFADS_TEST_WORKERS:-2}
set +e
"$PY" -m pytest -n "$workers" --dist loadfile "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: treat that as a failure to notice.
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
