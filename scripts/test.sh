#!/usr/bin/env bash
# Install the toolkit with its test extras into .venv (scripts/install.sh), check src/ with ruff and mypy, and run
# the whole test suite (what CI runs), after installing the Debian packages the tests drive for real: Orthanc
# (DICOMweb), Chromium and espeak-ng.
set -euo pipefail
cd "$(dirname "$0")/.."
# A real DICOMweb server for tests/test_imaging_dicomweb.py (the tests start it themselves on loopback).
if ! { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } \
        || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
fi
# Headless Chromium for the web page test (tests/test_serve_web.py); Playwright drives this Debian build.
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
# dicom3tools (dciodvfy: IOD validation of what `deid` and `--sr` write, tests/test_deid_*.py, tests/test_sr.py)
# and tesseract (OCR of text burned into pixels, `deid --clean-pixels`).
if ! command -v dciodvfy >/dev/null 2>&1 || ! command -v tesseract >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dicom3tools tesseract-ocr tesseract-ocr-eng >/dev/null
fi
# espeak-ng speaks the test dictations for tests/test_asr.py (MedASR transcription on real speech audio).
if ! command -v espeak-ng >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng >/dev/null
fi
bash scripts/install.sh test
# The docs site must build without a warning (broken links or anchors, a page missing from the nav); the CLI
# reference page is generated from the app here, so a command that cannot render its help fails too.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
# The habits before the tests: lint and format of the whole repository, types of src/ (rules in pyproject.toml), and
# the layers (.importlinter).
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # the layers of docs/ARCHITECTURE.md (.importlinter)
exec .venv/bin/python -m pytest "$@"
