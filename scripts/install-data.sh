#!/usr/bin/env bash
# Installs Fashion-MNIST from Debian when it is missing (as root); otherwise says how to get it.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist) ..."
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || \
    (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)
  if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then exit 0; fi
  echo "apt-get could not install dataset-fashion-mnist." >&2
fi
cat >&2 <<MSG
Fashion-MNIST was not found in $dir.
Get it with (as root):   apt-get update && apt-get install -y dataset-fashion-mnist
or pass --data-dir DIR holding the four IDX files (train-images-idx3-ubyte.gz, ...),
or --download to fetch them through torchvision (needs a network and 'pip install torchvision').
MSG
exit 0
