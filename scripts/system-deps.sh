#!/usr/bin/env bash
# Install the Debian packages melt's audio features and tests need, when any is missing.
set -euo pipefail
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
# the preference test's web page is tested in Debian's Chromium, driven by its chromedriver through Selenium
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# venv for the Makefile's .venv; a C++ compiler for llama-cpp-python, which builds from source where no wheel exists
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v g++ >/dev/null 2>&1 && command -v cmake >/dev/null 2>&1 || missing+=(build-essential cmake)
[ -e /usr/lib/x86_64-linux-gnu/libsndfile.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/libsndfile.so.1 ] || missing+=(libsndfile1)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
