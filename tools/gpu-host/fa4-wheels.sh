#!/usr/bin/env bash
# FlashAttention-4 (the fa4, fa4_graphbreak and sdpa_fa4 attention entries) for the GPU host, which has no network,
# in two parts, each small enough for a device call beside others (the ignored folder .fa4wheels/ at the root):
#   tools/gpu-host/fa4-wheels.sh download   on a machine with the package index: the wheels into .fa4wheels/wheels/,
#                                            each stored uncompressed, then one tar of them, xz-compressed, in
#                                            .fa4wheels/parts/ as two parts (split, below)
#   tools/gpu-host/fa4-wheels.sh split [MIB] the parts split again: part-00 of MIB MiB (6 unless given), part-01 the
#                                            rest (47 MiB with 6)
#   tools/gpu-host/fa4-wheels.sh install    on the host, once the parts have been carried there: unpacks the wheels,
#                                            checks them, installs them with .gpuwheels/ (setup.sh) and imports
#                                            flash-attn-4
# The wheels as published are 83 MB (zip-compressed, 79 MB of them nvidia-cutlass-dsl's CUDA 13 library): two calls'
# worth beside the checkout. Stored uncompressed and compressed together with xz they are 53 MiB, still two calls'
# beside .gpuwheels/ (41 MiB) and a slim checkout: the device tool refused 60.8 MiB of files (66.0 MiB in 4 KiB
# blocks, `device-tree.sh size`). So part-00 (6 MiB) travels with .gpuwheels/ in a sweep's first call and part-01 in
# the next (ignored files stay on a warm host between calls, for one that follows within its 30 s), which runs
# `install` before its sweep. A stored wheel is the same wheel (its RECORD lists each file's content hash, not how it
# was compressed). The wheels' checksums (of the stored wheels) travel inside the tar, so a missing or damaged part
# fails the check. After `install`, every `source tools/gpu-host/setup.sh` installs them again with the rest.
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
    for wheel in "$dir"/wheels/*.whl; do
        "${PYTHON:-python3}" -c 'import sys, zipfile
src, dst = sys.argv[1], sys.argv[1] + ".stored"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for info in zin.infolist():
        data = zin.read(info)  # before the entry is marked stored: it is read as it was compressed
        info.compress_type = zipfile.ZIP_STORED
        zout.writestr(info, data)' "$wheel"
        mv "$wheel.stored" "$wheel"
    done
    (cd "$dir/wheels" && sha256sum -- *.whl >SHA256SUMS)
    tar -cf - -C "$dir" wheels | xz -9 -T0 >"$dir/parts/fa4-wheels.tar.xz"
    du -b "$dir/wheels"/*.whl
    "$0" split
    ;;
split)
    first_mib=${2:-6}
    [[ $first_mib =~ ^[1-9][0-9]*$ ]] ||
        { echo "$0 split: MIB is a whole number of MiB, not '$first_mib'" >&2; exit 2; }
    parts=("$dir"/parts/fa4-wheels.tar.xz*)
    [ -e "${parts[0]}" ] || { echo "$0 split: no $dir/parts/fa4-wheels.tar.xz*: run download first" >&2; exit 1; }
    # Joined into a temporary file first, so that the old parts are removed only once the whole is there.
    whole=$dir/parts/.whole
    cat "${parts[@]}" >"$whole"
    rm -f "${parts[@]}"
    head -c "$((first_mib * 1024 * 1024))" "$whole" >"$dir/parts/fa4-wheels.tar.xz.part-00"
    tail -c "+$((first_mib * 1024 * 1024 + 1))" "$whole" >"$dir/parts/fa4-wheels.tar.xz.part-01"
    rm "$whole"
    ls -l "$dir/parts"
    ;;
install)
    if compgen -G "$dir/parts/fa4-wheels.tar.xz.part-*" >/dev/null; then
        parts=("$dir"/parts/fa4-wheels.tar.xz.part-*)
        for i in "${!parts[@]}"; do
            expected=$(printf '%s/parts/fa4-wheels.tar.xz.part-%02d' "$dir" "$i")
            if [ "${parts[$i]}" != "$expected" ]; then
                echo "$0 install: $expected is not here (carried with .gpuwheels/ in the call before, to a host" \
                    "kept warm since): the parts here are ${parts[*]}" >&2
                exit 1
            fi
        done
        rm -rf "$dir/wheels"
        # Python's lzma where the host has no xz.
        if command -v xz >/dev/null; then unxz=(xz -d); else
            unxz=(python3 -c \
                'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)')
        fi
        cat "$dir"/parts/fa4-wheels.tar.xz.part-* | "${unxz[@]}" | tar -xf - -C "$dir"
    fi
    (cd "$dir/wheels" && sha256sum --quiet -c SHA256SUMS)
    # shellcheck source=tools/gpu-host/setup.sh
    source tools/gpu-host/setup.sh
    python3 -c 'import importlib.metadata as m, flash_attn.cute, torch.nn.attention as a
print("flash-attn-4", m.version("flash-attn-4"), "nvidia-cutlass-dsl", m.version("nvidia-cutlass-dsl-libs-cu13"),
      "at", flash_attn.cute.__file__, "| torch FA impls:", a.list_flash_attention_impls())'
    ;;
*)
    echo "usage: $0 download|split [MIB]|install" >&2
    exit 2
    ;;
esac
