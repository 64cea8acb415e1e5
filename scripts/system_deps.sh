#!/usr/bin/env bash
# System packages the project uses, installed where we may (root with apt-get).
#   dataset-fashion-mnist : task 1 of the offline sequence, without internet
#   chromium              : the notebook browser test (tests/test_browser.py)
# Usage: scripts/system_deps.sh [data] [browser]
set -euo pipefail
want=()
for what in "$@"; do
  case "$what" in
    data) [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || want+=(dataset-fashion-mnist) ;;
    browser) command -v chromium >/dev/null || want+=(chromium) ;;
  esac
done
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${want[*]} with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
else
  echo "note: ${want[*]} not installed and apt-get is not available to this user."
  echo "      Fashion-MNIST falls back to torchvision's download (needs internet);"
  echo "      run 'sudo apt-get install ${want[*]}' to work offline."
fi
