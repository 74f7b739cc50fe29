#!/usr/bin/env bash
# Rebuilds the third-party browser files Ruyi embeds (src/http/assets/vendor/) from the
# versions pinned in web/package-lock.json: uPlot for the console's charts, and the official
# WuKongIM JS SDK bundled for the demo chat (esbuild, with the `buffer` package standing in
# for Node's global Buffer). The output is committed, so `cargo build` needs no npm; run
# this only to change a version.
#
#   scripts/build-assets.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/http/assets/vendor
mkdir -p "$out"
(cd web && npm ci --no-audit --no-fund)
web/node_modules/.bin/esbuild web/sdk-entry.js --bundle --format=iife --global-name=WuKong \
  --inject:web/buffer-shim.js --minify --legal-comments=eof --outfile="$out/wukongimjssdk.js"
cp web/node_modules/uplot/dist/uPlot.iife.min.js "$out/uPlot.iife.min.js"
cp web/node_modules/uplot/dist/uPlot.min.css "$out/uPlot.min.css"
cp web/node_modules/uplot/LICENSE "$out/uPlot.LICENSE"
echo "built $(ls "$out" | tr '\n' ' ')"
