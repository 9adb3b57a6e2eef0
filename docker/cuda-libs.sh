#!/usr/bin/env bash
# Checks that a CUDA build of `ifp` finds its CUDA libraries, and says where each missing one
# comes from. The CUDA build links them by name (candle configures cudarc that way), so a missing
# one stops the process before `main` with only the loader's terse message.
#
#   docker/cuda-libs.sh [BINARY]          # default: the ifp found on PATH
#
# Exit 0: all found (prints the resolved paths); 1: something is missing (prints how to fix).
# Also searches Python's `nvidia` wheel folders (e.g. PyTorch's) and prints the LD_LIBRARY_PATH
# that would provide what is missing from there.
set -uo pipefail

bin="${1:-$(command -v ifp || true)}"
[[ -n "$bin" && -x "$bin" ]] || { echo "cuda-libs: no ifp binary (pass its path)" >&2; exit 2; }
command -v ldd >/dev/null || { echo "cuda-libs: ldd not found" >&2; exit 2; }

out="$(ldd "$bin" 2>&1)"
echo "cuda-libs: CUDA libraries of $bin:"
grep -E 'lib(cuda|cudart|cublas|cublasLt|curand|nvrtc)\.so' <<<"$out" | sed 's/^[[:space:]]*/  /'
missing="$(awk '/not found/ {print $1}' <<<"$out")"
[[ -z "$missing" ]] && { echo "cuda-libs: all found"; exit 0; }

# Candidate folders: the NVIDIA wheels of any python3 on PATH (PyTorch installs them), and the
# wheels docker/build-cuda.sh installs.
dirs=()
for py in python3 python; do
    command -v "$py" >/dev/null || continue
    while IFS= read -r d; do [[ -d "$d" ]] && dirs+=("$d"); done < <("$py" - 2>/dev/null <<'EOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
seen = set()
for r in roots:
    for d in glob.glob(os.path.join(r, "nvidia", "*", "lib")) + glob.glob(os.path.join(r, "nvidia", "cu*", "lib")):
        if d not in seen:
            seen.add(d)
            print(d)
EOF
    )
done
dirs+=("${IFP_CUDA_DIR:-/var/tmp/ifp-cuda-wheels}/root/nvidia/cu13/lib")

found_dirs=()
for lib in $missing; do
    case "$lib" in
    libcuda.so*) how="the NVIDIA driver (install driver >= 580; in a container run with --gpus all / the NVIDIA container toolkit)" ;;
    libcublas*) how="pip install nvidia-cublas==13.0.* (or a CUDA 13 toolkit)" ;;
    libcurand*) how="pip install nvidia-curand==10.4.* (CUDA 13's cuRAND, or a CUDA 13 toolkit)" ;;
    libnvrtc*) how="pip install nvidia-cuda-nvrtc==13.0.* (or a CUDA 13 toolkit)" ;;
    libcudart*) how="pip install nvidia-cuda-runtime==13.0.* (or a CUDA 13 toolkit)" ;;
    *) how="(not a CUDA library: install it with the system's package manager)" ;;
    esac
    echo "cuda-libs: MISSING $lib: comes from $how"
    for d in "${dirs[@]}"; do
        if [[ -e "$d/$lib" && "$lib" != libcuda.so* ]]; then
            echo "cuda-libs:   found in $d"
            found_dirs+=("$d")
            break
        fi
    done
done
if ((${#found_dirs[@]})); then
    uniq="$(printf '%s\n' "${found_dirs[@]}" | awk '!seen[$0]++' | paste -sd:)"
    echo "cuda-libs: to use those: export LD_LIBRARY_PATH=$uniq\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
fi
exit 1
