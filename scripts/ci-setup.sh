#!/usr/bin/env bash
# System packages the test suite uses beyond Python: Debian's chromium, for the test that opens a report
# in a real headless browser (tests/test_report.py; skipped with a reason when chromium is absent).
# Needs root and Debian's package lists; a no-op where chromium is already installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive  # CI has no terminal to answer a debconf question
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
