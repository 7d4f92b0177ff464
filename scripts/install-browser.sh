#!/bin/sh
# A Chromium for the report's browser test (tests/test_report.py), which skips without one.
# Test set-up only: `make demo` never runs this. Tried in this order, first that works wins:
#   1. a Chromium already on the machine (chromium, chromium-browser, google-chrome on PATH)
#      or one Playwright downloaded before (~/.cache/ms-playwright);
#   2. Playwright's own download into ~/.cache/ms-playwright: no root needed
#      (`.venv/bin/python -m playwright install chromium`; needs access to Playwright's CDN);
#   3. only when running as root and MEDUNET_APT_BROWSER=1: Debian's package
#      (`apt-get install --no-install-recommends chromium`).
# Never fails: without a browser the test says why it skipped.
PY=${1:-.venv/bin/python}

for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
if ls "$HOME"/.cache/ms-playwright/chromium*/chrome-linux*/chrome >/dev/null 2>&1; then exit 0; fi
if "$PY" -m playwright install chromium >/dev/null 2>&1; then
    echo "install-browser: Playwright's Chromium installed in ~/.cache/ms-playwright"
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && [ "${MEDUNET_APT_BROWSER:-0}" = 1 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
        && exit 0
fi
echo "install-browser: no Chromium found or installable without root; the report's browser test will skip" \
     "(install one: '$PY -m playwright install chromium', or as root: 'apt-get install chromium')"
exit 0
