#!/usr/bin/env bash
# Renders a sparsify report.html in headless Chromium and writes a full-page PNG beside it, to look
# at what a user sees. Needs Debian's chromium (installed with apt-get when missing and run as root).
#
#   scripts/report_screenshot.sh out/bert-sparse/report.html [out.png]
set -euo pipefail
html=${1:?usage: $0 REPORT.html [OUT.png]}
png=${2:-${html%.html}.png}
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is not installed (apt-get install chromium)" >&2
        exit 1
    fi
fi
height=${HEIGHT:-2600}
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --allow-file-access-from-files \
    --window-size=1000,"$height" --screenshot="$(realpath -m "$png")" "file://$(realpath "$html")" 2>/dev/null
echo "wrote $png"
