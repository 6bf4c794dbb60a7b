#!/usr/bin/env bash
# Installs whatever is missing, and nothing twice:
#   1. .venv with the pinned packages (pyproject.toml + requirements.lock) and, with --accelerator=cuda12 or tpu
#      (or ACCELERATOR=cuda12 or tpu), JAX's plugin for NVIDIA GPUs or Cloud TPUs (requirements-<accelerator>.lock);
#      without either, the accelerator of the last install (cpu at first); --accelerator=cpu removes the plugin;
#   2. Jane Austen's novels: the Debian package r-cran-janeaustenr, unpacked
#      (apt-get download + dpkg -x, so R is not pulled in) into .data/debian;
#   3. the Fashion-MNIST IDX files: the Debian package dataset-fashion-mnist
#      (apt-get install as root; apt-get download + dpkg -x into .data/debian
#      otherwise). If neither works, train.py downloads the upstream files on
#      first use when online, and otherwise says what to do.
set -euo pipefail
cd "$(dirname "$0")/.."

accelerator=${ACCELERATOR:-}
for arg in "$@"; do
  case $arg in
    --accelerator=*) accelerator=${arg#--accelerator=} ;;
    *) echo "error: unknown argument '$arg'; usage: bash scripts/setup.sh [--accelerator=cpu|cuda12|tpu]" >&2; exit 2 ;;
  esac
done
installed=$(cat .venv/.accelerator 2>/dev/null || echo cpu)
accelerator=${accelerator:-$installed}
case $accelerator in
  cpu) lock= ;;
  cuda12 | tpu) lock=requirements-$accelerator.lock ;;
  *) echo "error: accelerator '$accelerator' (--accelerator or ACCELERATOR): expected cpu, cuda12 or tpu" >&2; exit 2 ;;
esac

python=$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: the project needs Python 3.11 or newer; $python is $("$python" --version 2>&1 || echo missing)." \
       "Install one (Debian: apt-get install python3.11 python3.11-venv) and run this with it first on PATH" \
       "(or remove .venv if it was made by an older Python)" >&2
  exit 1
fi

# apt-get download: as root, once more after `apt-get update` if it fails (a fresh container has no package lists).
download() {
  (cd "$1" && apt-get download "$2" >/dev/null 2>&1) \
    || { [ "$(id -u)" = 0 ] && apt-get update -q >/dev/null 2>&1 && (cd "$1" && apt-get download "$2" >/dev/null 2>&1); }
}

stamp=".venv/.installed-$(cat pyproject.toml requirements.lock $lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || { echo "error: 'python3 -m venv' failed; install it (Debian: apt-get install python3-venv) and re-run" >&2; exit 1; }
  fi
  echo "Installing the pinned Python packages${lock:+ and JAX for $accelerator} into .venv (a few minutes, once)..."
  .venv/bin/python -m pip install -q --upgrade pip
  if [ "$installed" != cpu ] && [ "$installed" != "$accelerator" ]; then  # The other accelerator's packages go.
    .venv/bin/python -m pip uninstall -y -q $(grep -v '^#' "requirements-$installed.lock" | sed 's/[^A-Za-z0-9._-].*//')
  fi
  .venv/bin/python -m pip install -q -c requirements.lock ${lock:+-r "$lock"} -e ".[test]"
  rm -f .venv/.installed-*
  echo "$accelerator" > .venv/.accelerator
  touch "$stamp"
fi

austen=.data/debian/usr/lib/R/site-library/janeaustenr/data
if [ ! -f /usr/lib/R/site-library/janeaustenr/data/Rdata.rdx ] && [ ! -f "$austen/Rdata.rdx" ]; then
  echo "Unpacking Jane Austen's novels (Debian package r-cran-janeaustenr, 1.6 MB)..."
  tmp=$(mktemp -d)
  mkdir -p .data/debian
  if ! { download "$tmp" r-cran-janeaustenr && dpkg -x "$tmp"/r-cran-janeaustenr_*.deb .data/debian; }; then
    echo "warning: could not unpack the Debian package r-cran-janeaustenr; the language-model configs" \
         "(configs/austen_lm_*.py) need it, or --config.dataset.rdata_dir" >&2
  fi
  rm -rf "$tmp"
fi

files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
has_fmnist() { for f in $files; do [ -f "$1/$f" ] || return 1; done; }
system_dir=/usr/share/datasets/fashion-mnist
local_root=.data/debian
if has_fmnist "$system_dir" || has_fmnist "$local_root$system_dir"; then
  exit 0
fi
echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist, 31 MB)..."
if [ "$(id -u)" = 0 ] && { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; then
  exit 0
fi
tmp=$(mktemp -d)
mkdir -p "$local_root"
if download "$tmp" dataset-fashion-mnist && dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$local_root"; then
  rm -rf "$tmp"
  exit 0
fi
rm -rf "$tmp"
echo "warning: could not install the Debian package dataset-fashion-mnist; train.py will download Fashion-MNIST" \
     "from the upstream site on first use (needs internet), or set --config.dataset.idx_dir to a folder with the IDX files" >&2
