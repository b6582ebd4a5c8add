#!/usr/bin/env bash
# A separate virtual environment holding TRL (never a project dependency) for the peer benchmarks.
#   bash benchmarks/setup_trl.sh        # creates .venv-trl once; re-running is a no-op
# torch is pinned to the same CPU wheel as the project's (a bare `torch` would pull a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-trl
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import trl, torch" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q "trl==${TRL_VERSION:-1.16.0}" datasets
"$VENV/bin/python" -c "import trl, transformers, torch; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
