# Source this on the GPU host (Python 3.12, torch 2.11 preinstalled, no network) to install the wheels it lacks.
# The wheels sit in the ignored folder .gpuwheels/ at the checkout's root (what it holds: tools/gpu-host/README.md).
# --no-deps keeps pip from replacing the host's torch; Composer's torch<2.7.1 pin is thereby ignored on purpose.
# FlashAttention-4's wheels, where tools/gpu-host/fa4-wheels.sh unpacked them, install in the same call: pip --target
# replaces a package folder whole, and flash-attn 2 and flash-attn-4 share flash_attn/.
fa4_wheels=$(ls .fa4wheels/wheels/*.whl 2>/dev/null || true)
# A warm host keeps /tmp for a while after a call: the same wheels (names and sizes) are not installed again.
wheels_key=$(find .gpuwheels .fa4wheels/wheels -name '*.whl' -printf '%f %s\n' 2>/dev/null | sort | sha256sum)
if [ "$(cat /tmp/site/.attnsweep-wheels 2>/dev/null)" != "$wheels_key" ]; then
    rm -f /tmp/site/.attnsweep-wheels
    # shellcheck disable=SC2086  # one wheel per word
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpuwheels/* $fa4_wheels ||
        return 1
    if [ -n "$fa4_wheels" ]; then
        # flash-attn 2's wheel ships an early copy of flash_attn/cute as well, and which copy's files pip wrote last
        # is not defined: flash-attn-4's own replaces it whole.
        rm -rf /tmp/site/flash_attn/cute
        python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("flash_attn/cute/")])' \
            .fa4wheels/wheels/flash_attn_4-*.whl /tmp/site || return 1
    fi
    echo "$wheels_key" >/tmp/site/.attnsweep-wheels
fi
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
if [ -n "$fa4_wheels" ]; then
    # nvidia-cutlass-dsl's `cutlass` is found through a .pth file, and a PYTHONPATH folder's .pth files are not read
    # (only a site directory's): its one line, a folder, goes on the path here.
    PYTHONPATH="/tmp/site/$(cat /tmp/site/nvidia_cutlass_dsl.pth):$PYTHONPATH"
fi
unset fa4_wheels wheels_key
