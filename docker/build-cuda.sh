#!/usr/bin/env bash
# Builds the CUDA trainer (`--features cuda`) on any Linux x86_64 machine, with or without a GPU.
#
#   docker/build-cuda.sh                 # cargo build --release --features cuda -p ifp-server
#   docker/build-cuda.sh CMD ARGS...     # run CMD (e.g. `cargo clippy ... --features cuda`) in the CUDA env
#   docker/build-cuda.sh --env           # print the `export` lines (eval them in a shell)
#   docker/build-cuda.sh --runtime-env   # print the LD_LIBRARY_PATH a GPU worker needs at run time
#
# Why each step (ARCHITECTURE.md, "The CUDA build", says more):
# - candle-kernels compiles its kernels to PTX with nvcc, and cudarc links libcuda, cuBLAS,
#   cuBLASLt, cuRAND, NVRTC and libcudart at build time. PyPI's NVIDIA wheels provide all of them
#   but libcuda; they must be of ONE CUDA release (mixed ones fail with
#   "Unsupported .version 9.5; current version is '9.0'"), and CCCL must be there
#   ("nv/target: No such file" otherwise). They are installed with --no-deps because the nvcc
#   wheel's own dependencies are unpinned and would pull newer releases.
# - 13.0 is pinned because PTX newer than the driver's CUDA version does not load (the GPUs we
#   target run driver 580 = CUDA 13.0).
# - libcuda comes from the driver at run time; for linking we generate a stub exporting every
#   `cu*` name of the matching cuda.h, with the driver's soname libcuda.so.1.
# - The wheels are cached in $IFP_CUDA_DIR (outside the clone) so CI does not download them again.
set -euo pipefail

IFP_CUDA_DIR="${IFP_CUDA_DIR:-/var/tmp/ifp-cuda-wheels}"
# One CUDA release: 13.0 update 2 (cuBLAS and cuRAND number their versions on their own).
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
CUDA_HOME="$IFP_CUDA_DIR/root/nvidia/cu13"

say() { echo "build-cuda: $*" >&2; }

prepare() {
    local stamp="$IFP_CUDA_DIR/root/.ifp-wheels"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "${WHEELS[*]}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
        say "CUDA 13.0 wheels already installed in $IFP_CUDA_DIR/root"
    else
        local pip=(python3 -m pip)
        local install=("${pip[@]}" install -q --no-deps --no-index --find-links "$IFP_CUDA_DIR/wheels"
            --target "$IFP_CUDA_DIR/root" "${WHEELS[@]}")
        rm -rf "$IFP_CUDA_DIR/root"
        mkdir -p "$IFP_CUDA_DIR/wheels"
        say "installing ${WHEELS[*]} (no dependencies) into $IFP_CUDA_DIR/root"
        if ! "${install[@]}" 2>/dev/null; then
            say "not all cached: downloading them into $IFP_CUDA_DIR/wheels (~680 MB)"
            "${pip[@]}" download -q --no-deps --only-binary=:all: --dest "$IFP_CUDA_DIR/wheels" "${WHEELS[@]}"
            rm -rf "$IFP_CUDA_DIR/root"
            "${install[@]}"
        fi
        echo "${WHEELS[*]}" >"$stamp"
    fi

    # The wheels ship only versioned libraries (libcublas.so.13); the linker looks for libcublas.so.
    local lib
    for lib in cudart cublas cublasLt curand nvrtc; do
        local real
        real="$(cd "$CUDA_HOME/lib" && ls "lib$lib.so."* 2>/dev/null | grep -v alt | head -n1)"
        [[ -n "$real" ]] || { say "error: lib$lib.so.* missing in $CUDA_HOME/lib"; exit 1; }
        ln -sfn "$real" "$CUDA_HOME/lib/lib$lib.so"
    done

    local stub="$CUDA_HOME/lib/stubs/libcuda.so" src="$CUDA_HOME/lib/stubs/libcuda-stub.c"
    # Every cu* identifier of cuda.h and the interop headers (the API names and the _v2 names
    # they #define to) becomes a function returning CUDA_ERROR_STUB_LIBRARY (34), as NVIDIA's own
    # stub does: the linker only needs the names, and a binary that loads the stub by mistake
    # gets a clear error.
    local want
    want="$(cd "$CUDA_HOME/include" && cat cuda.h cudaGL.h cudaEGL.h cudaVDPAU.h |
        grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' | sort -u | sed 's/.*/int &(void) { return 34; }/')"
    if [[ ! -f "$stub" || "$(cat "$src" 2>/dev/null)" != "$want" ]]; then
        say "generating the libcuda link stub $stub (soname libcuda.so.1) from cuda.h"
        mkdir -p "$CUDA_HOME/lib/stubs"
        echo "$want" >"$src"
        ${CC:-cc} -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$src"
    fi
    # Under its soname too, for a smoke run of the binary without a driver (CI): it then stops
    # at cuInit with CUDA_ERROR_STUB_LIBRARY. Never on LD_LIBRARY_PATH of a GPU machine.
    ln -sfn libcuda.so "$CUDA_HOME/lib/stubs/libcuda.so.1"
}

export_env() {
    export CUDA_HOME CUDA_ROOT="$CUDA_HOME"
    export PATH="$CUDA_HOME/bin:$PATH"
    # No GPU to ask: 90 = H100/H200. cudaforge builds PTX for this compute capability.
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
    # build scripts that run nvcc --version or test programs find the wheel libraries.
    export LD_LIBRARY_PATH="$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

case "${1:-}" in
--env)
    prepare
    export_env
    printf 'export %s=%q\n' CUDA_HOME "$CUDA_HOME" CUDA_ROOT "$CUDA_ROOT" PATH "$PATH" \
        CUDA_COMPUTE_CAP "$CUDA_COMPUTE_CAP" CUDAFORGE_THREADS "$CUDAFORGE_THREADS" \
        LD_LIBRARY_PATH "$LD_LIBRARY_PATH"
    ;;
--runtime-env)
    # At run time only cuBLAS(Lt), cuRAND, NVRTC and cudart come from the wheels (or a CUDA
    # install); libcuda.so.1 must come from the NVIDIA driver, never from the stub.
    printf 'export LD_LIBRARY_PATH=%q\n' "$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    ;;
"")
    prepare
    export_env
    cd "$(dirname "$0")/.."
    say "CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDAFORGE_THREADS=$CUDAFORGE_THREADS"
    say "running: cargo build --release --features cuda -p ifp-server (target: ${CARGO_TARGET_DIR:-target})"
    exec cargo build --release --features cuda -p ifp-server
    ;;
*)
    prepare
    export_env
    say "CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDAFORGE_THREADS=$CUDAFORGE_THREADS"
    say "running: $*"
    exec "$@"
    ;;
esac
