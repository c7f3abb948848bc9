# Source this on the GPU host (Python 3.12, torch 2.11 preinstalled, no network) to install the wheels it lacks.
# The wheels sit in the ignored folder .gpuwheels/ at the checkout's root (what it holds: tools/gpu-host/README.md).
# --no-deps keeps pip from replacing the host's torch; Composer's torch<2.7.1 pin is thereby ignored on purpose.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpuwheels/* || return 1
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
