#!/usr/bin/env bash
# Install FFCV into the given Python's environment, with the system libraries its build needs
# (pkg-config, libturbojpeg, OpenCV). Where they cannot be installed (no apt-get, not root), say why
# and exit 0: the FFCV tests are then skipped with that reason, and every other backend still works.
#   tools/install_ffcv.sh .venv/bin/python
set -uo pipefail
python="${1:?usage: install_ffcv.sh PYTHON}"
version="ffcv==1.0.2"

if "$python" -c "import ffcv" 2>/dev/null; then
    exit 0
fi
if ! pkg-config --exists libturbojpeg opencv4 2>/dev/null; then
    packages="pkg-config libturbojpeg0-dev libopencv-dev"
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "install_ffcv: apt-get install $packages (FFCV's build needs them)"
        (apt-get install -y -qq $packages >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $packages >/dev/null 2>&1; }) ||
            { echo "install_ffcv: apt-get could not install $packages; FFCV not installed, its tests will be skipped"; exit 0; }
    else
        echo "install_ffcv: FFCV needs $packages (apt-get install -y $packages, as root); not installed, its tests will be skipped"
        exit 0
    fi
fi
"$python" -m pip install --quiet "$version" ||
    echo "install_ffcv: pip install $version failed; FFCV not installed, its tests will be skipped"
