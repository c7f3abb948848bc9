#!/usr/bin/env bash
# Install MosaicML Composer 0.32.1 (PyPI: mosaicml) for the `composer` harness, into the Python environment whose
# interpreter is `python` (or $PYTHON): activate the project's venv first, or run
#     PYTHON=.venv/bin/python bash envs/install-composer.sh
#
# Composer 0.32.1 declares torch<2.7.1 and torchvision<0.22.1, yet runs on the newer torch this project uses. So its
# runtime dependencies are installed normally from envs/composer.txt (which leaves torch and torchvision out), and
# Composer itself without its dependencies:
#     python -m pip install -r envs/composer.txt
#     python -m pip install --no-deps mosaicml==0.32.1
# Then Composer is imported as a check, and `pip check` must report nothing about mosaicml but those two pins.
# pip's output goes to $SETUP_LOG (envs/setup.sh passes .venv/setup.log; else a temporary file), shown when it fails.
# When that Composer already imports, nothing is installed: only the checks run.
set -euo pipefail

COMPOSER_VERSION=0.32.1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python}"
log="${SETUP_LOG:-$(mktemp -t install-composer.XXXXXX.log)}"

if "$py" -c "import sys, composer; sys.exit(composer.__version__ != sys.argv[1])" "$COMPOSER_VERSION" \
    >>"$log" 2>&1; then
    echo "install-composer: composer $COMPOSER_VERSION already installed"
else
    printf 'install-composer: Composer %s and its dependencies (envs/composer.txt) ... ' "$COMPOSER_VERSION"
    if "$py" -m pip install --disable-pip-version-check -r "$here/composer.txt" >>"$log" 2>&1 &&
        "$py" -m pip install --disable-pip-version-check --no-deps "mosaicml==${COMPOSER_VERSION}" >>"$log" 2>&1; then
        echo ok
    else
        echo FAILED
        echo "install-composer: the last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
fi

"$py" - "$COMPOSER_VERSION" <<'PYEOF'
import sys

import composer
import torch
from composer import Trainer  # noqa: F401  (the trainer and the callback the harness needs must import)
from composer.callbacks import SpeedMonitor  # noqa: F401

want = sys.argv[1]
if composer.__version__ != want:
    sys.exit(f"install-composer: expected composer {want}, imported {composer.__version__} ({composer.__file__})")
print(f"install-composer: composer {composer.__version__} imports on torch {torch.__version__}")
PYEOF

# pip check exits non-zero for the torch/torchvision pins we deliberately ignore, and possibly for unrelated packages
# of the environment; fail only on a mosaicml requirement other than those two.
problems="$("$py" -m pip check 2>&1 | grep -i '^mosaicml ' |
    grep -v -E 'requirement (torch|torchvision)[<>=!~ ,;]' || true)"
if [ -n "$problems" ]; then
    echo "install-composer: unmet Composer dependencies:" >&2
    echo "$problems" >&2
    exit 1
fi
echo "install-composer: ok (only Composer's torch/torchvision pins are knowingly unmet)"
