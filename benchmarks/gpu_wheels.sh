#!/usr/bin/env bash
# Download HERE (where pip reaches a package index) the wheels that the GPU machine's image lacks
# and the GPU check imports, for its Python 3.12 on manylinux x86_64, into a folder that the
# device call carries (default .whl, ignored through .git/info/exclude), then measure what
# would travel: the carry limit is 64 MiB for the working tree and carried paths together.
#
#   bash benchmarks/gpu_wheels.sh [DIR]
#
# Which: the image (/work/.library/device/KINDS.md, "Python packages already there") has torch,
# triton, torchvision, timm, numpy, h5py, matplotlib, pillow, typer, tqdm, imageio, scipy,
# pytest, hypothesis, jaxtyping, einops, humanize, rich, wrapt; it lacks SimpleITK, nibabel,
# pydicom (xraypose), and nanodrr with roma, torchio, deprecated, platformdirs (the render
# benchmark's peer; torchio imports SimpleITK).  Versions: those this project's .venv runs.
# gpu_check.py installs them with --no-deps into a folder of its own (never over the image's
# packages) and reports any module that still does not import.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
PINS=(simpleitk==2.5.7 nibabel==5.4.2 pydicom==3.0.2 nanodrr==0.1.7 roma==1.8.0 torchio==1.2.1
      deprecated==3.0.1 platformdirs==4.14.9)
LIMIT=$((64 * 1024 * 1024))

mkdir -p "$DIR"
case "$DIR" in
    /*|*..*) ;;  # outside the checkout or odd: leave git's ignore lists alone
    *) if ! git check-ignore -q "$DIR/x.whl" 2>/dev/null; then echo "/${DIR%/}/" >> "$(git rev-parse --git-path info/exclude)"; fi ;;
esac
rm -f "$DIR"/*.whl  # one version of each: two would stop the whole install there
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" "${PINS[@]}"

echo "wheels in $DIR and what each requires (the image must hold every non-extra requirement not listed here):"
for w in "$DIR"/*.whl; do
    reqs=$(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
           | sed 's/^Requires-Dist: //' | tr '\n' ';' || true)
    printf '  %-70s %8d KiB  %s\n' "$(basename "$w")" $(( $(stat -c %s "$w") / 1024 )) "$reqs"
done

wheels=$(find "$DIR" -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
       | awk '{s += $1} END {print s + 0}')
total=$((wheels + tree))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "wheels $(mib "$wheels") + working tree that travels $(mib "$tree") = $(mib "$total") of the 64 MiB carry limit"
if [ "$total" -gt "$LIMIT" ]; then
    echo "too large for one device call: drop pydicom (gpu_check does not import it) and move the" >&2
    echo "benchmark results and figures out of the checkout for the call, then back (as on 2026-12-04):" >&2
    echo "  mkdir -p ../aside && mv benchmarks/results docs/img ../aside/ && mv .whl/pydicom-*.whl ../aside/" >&2
    echo "  ... device call ...;  mv ../aside/results benchmarks/ && mv ../aside/img docs/ && mv ../aside/pydicom-*.whl .whl/" >&2
    exit 1
fi
