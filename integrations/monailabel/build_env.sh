#!/usr/bin/env bash
# Build MONAI Label's separate environment (about 6 minutes offline) and link it as integrations/monailabel/.venv.
#   bash integrations/monailabel/build_env.sh [ENV_DIR]
# Without ENV_DIR the environment is built once per content of requirements.txt and Python version under
# ${MEDSSL_MONAI_CACHE:-~/.cache/medssl-monai}/monailabel-<key> and reused by later clones (CI included): the key
# changes whenever what would be installed changes, and a build that did not finish is never reused.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if [ $# -ge 1 ]; then
  env_dir="$1"
else
  key=$({ cat "$here/requirements.txt"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
  env_dir="${MEDSSL_MONAI_CACHE:-$HOME/.cache/medssl-monai}/monailabel-$key"
fi
if [ -f "$env_dir/.complete" ]; then
  echo "MONAI Label environment up to date: $env_dir"
else
  rm -rf "$env_dir"
  "$py" -m venv "$env_dir"
  "$env_dir/bin/pip" install --upgrade pip
  "$env_dir/bin/pip" install -r "$here/requirements.txt"
  touch "$env_dir/.complete"
  echo "MONAI Label environment built: $env_dir"
fi
if [ "$env_dir" != "$here/.venv" ]; then rm -rf "$here/.venv"; ln -s "$env_dir" "$here/.venv"; fi
echo "next: bash $here/serve.sh /path/to/images   (see README.md)"
