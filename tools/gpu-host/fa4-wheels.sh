#!/usr/bin/env bash
# FlashAttention-4 (the fa4, fa4_graphbreak and sdpa_fa4 attention entries) for the GPU host, which has no network,
# in parts small enough for one device call each (the ignored folder .fa4wheels/ at the checkout's root):
#   tools/gpu-host/fa4-wheels.sh download   on a machine with the package index: the wheels into .fa4wheels/wheels/,
#                                            then one tar of them split into .fa4wheels/parts/ (40 MiB a part)
#   tools/gpu-host/fa4-wheels.sh install    on the host, once every part has been carried there: reassembles and
#                                            unpacks the wheels, checks them, installs them with .gpuwheels/ (setup.sh)
#                                            and imports flash-attn-4
# Carry one part per call (`carry: [.fa4wheels/parts/fa4-wheels.tar.part-00]`, then -01, ...): ignored files stay
# on a warm host between calls (one that follows within its 30 s). What travels in a call, the checkout (about 20 MiB)
# and what it carries, is at most 64 MiB: each 40 MiB part travels alone, and .gpuwheels/ (41 MiB) in the call after
# them that runs `install`. The wheels' checksums travel inside the tar, so a missing or damaged part fails the
# check. After `install`, every `source tools/gpu-host/setup.sh` installs them again with the rest.
#
# flash-attn-4 4.0.0b18 is the newest release whose _flash_attn_fwd returns (out, lse), the two values torch 2.11's
# FA4 route (torch/nn/attention/_fa4.py) unpacks; 4.0.0b19 and later return more and break that route. It has the
# Hopper (sm_90) forward and backward kernels and runs head dim 64, so one install serves all three entries. Its
# dependencies are pinned to releases of its time (June 2026). The host has torch 2.11 (with cuda-bindings 13, which
# is all of cuda-python that nvidia-cutlass-dsl imports), triton, numpy and typing_extensions; the rest is here.
# nvidia-cutlass-dsl-libs-cu13 holds the whole DSL for CUDA 13 (a superset of nvidia-cutlass-dsl-libs-base, into whose
# files it installs), so -libs-base is left out; nvidia-cutlass-dsl itself is metadata only.
set -euo pipefail
dir=.fa4wheels
wheels=(
    flash-attn-4==4.0.0b18
    nvidia-cutlass-dsl==4.5.2
    nvidia-cutlass-dsl-libs-cu13==4.5.2
    quack-kernels==0.5.0
    apache-tvm-ffi==0.1.12
    torch-c-dlpack-ext==0.1.5
    einops==0.8.2
)
case "${1:-}" in
download)
    rm -rf "$dir"
    mkdir -p "$dir/wheels" "$dir/parts"
    # --no-deps with the list above: a resolver would fetch torch and CUDA libraries the host already has.
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dir/wheels" "${wheels[@]}"
    (cd "$dir/wheels" && sha256sum -- *.whl >SHA256SUMS)
    # Wheels are compressed already: a plain tar.
    tar -cf - -C "$dir" wheels | split -b 40M -d -a 2 - "$dir/parts/fa4-wheels.tar.part-"
    du -b "$dir/wheels"/*.whl
    ls -l "$dir/parts"
    ;;
install)
    if compgen -G "$dir/parts/fa4-wheels.tar.part-*" >/dev/null; then
        rm -rf "$dir/wheels"
        cat "$dir"/parts/fa4-wheels.tar.part-* | tar -xf - -C "$dir"
    fi
    (cd "$dir/wheels" && sha256sum --quiet -c SHA256SUMS)
    # shellcheck source=tools/gpu-host/setup.sh
    source tools/gpu-host/setup.sh
    python3 -c 'import importlib.metadata as m, flash_attn.cute, torch.nn.attention as a
print("flash-attn-4", m.version("flash-attn-4"), "nvidia-cutlass-dsl", m.version("nvidia-cutlass-dsl-libs-cu13"),
      "at", flash_attn.cute.__file__, "| torch FA impls:", a.list_flash_attention_impls())'
    ;;
*)
    echo "usage: $0 download|install" >&2
    exit 2
    ;;
esac
