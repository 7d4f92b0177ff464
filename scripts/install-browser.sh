#!/bin/sh
# Debian's Chromium for the report's browser test (tests/test_report.py), which skips without it.
# Playwright's own `playwright install` is not used: it downloads browsers from outside the distribution.
set -eu

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
