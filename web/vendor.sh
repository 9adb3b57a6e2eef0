#!/usr/bin/env bash
# Refreshes the vendored front-end library in web/static/vendor from the npm registry:
# uPlot, the charting library app.js draws the interactive charts with. The files are
# committed (the binary embeds them, so building needs no Node.js); this script says where
# they came from and checks them against the registry's SHA-512 integrity pinned here.
# To upgrade: change VERSION and INTEGRITY (`npm view uplot@X dist.integrity`), run it, and
# look at the charts on a job page and on /runs.
set -euo pipefail
VERSION=1.6.32
INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "uplot@$VERSION" >/dev/null
got="sha512-$(openssl dgst -sha512 -binary "uplot-$VERSION.tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
    echo "uplot-$VERSION.tgz: integrity $got, expected $INTEGRITY" >&2
    exit 1
fi
tar xzf "uplot-$VERSION.tgz"
out="$here/static/vendor"
mkdir -p "$out"
cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css "$out/"
cp package/LICENSE "$out/uPlot.LICENSE"
echo "web/static/vendor: uPlot $VERSION (integrity checked)"
