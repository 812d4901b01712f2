#!/usr/bin/env bash
# Install FFCV into the given Python's environment, with the system libraries its build needs
# (pkg-config, libturbojpeg, OpenCV). Where they cannot be installed (no apt-get, not root), say why,
# record the reason in <sys.prefix>/ffcv-not-installed.txt and exit 0: the FFCV tests are then skipped,
# the last lines of `make test` repeat that reason, and with CI set the test run fails (tests/ffcv_report.py).
# Every other backend still works.
#   tools/install_ffcv.sh .venv/bin/python
set -uo pipefail
python="${1:?usage: install_ffcv.sh PYTHON}"
version="ffcv==1.0.2"
status="$("$python" -c 'import sys; print(sys.prefix)')/ffcv-not-installed.txt"

not_installed() {
    echo "install_ffcv: $1; FFCV not installed, its tests will be skipped"
    echo "tools/install_ffcv.sh: $1" > "$status"
    exit 0
}

if "$python" -c "import ffcv" 2>/dev/null; then
    rm -f "$status"
    exit 0
fi
if ! pkg-config --exists libturbojpeg opencv4 2>/dev/null; then
    packages="pkg-config libturbojpeg0-dev libopencv-dev"
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "install_ffcv: apt-get install $packages (FFCV's build needs them)"
        (apt-get install -y -qq $packages >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $packages >/dev/null 2>&1; }) ||
            not_installed "apt-get could not install $packages"
    else
        not_installed "FFCV needs $packages (apt-get install -y $packages, as root)"
    fi
fi
"$python" -m pip install --quiet "$version" || not_installed "pip install $version failed"
"$python" -c "import ffcv" 2>/dev/null || not_installed "$version installed but \`import ffcv\` fails"
rm -f "$status"
