#!/usr/bin/env bash
# Build MONAI Label's separate environment and fetch the stock monaibundle sample app that main.py extends.
#   bash integrations/monailabel/build_env.sh [ENV_DIR]      (default: integrations/monailabel/.venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
env_dir="${1:-$here/.venv}"
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install --upgrade pip
"$env_dir/bin/pip" install -r "$here/requirements.txt"
if [ ! -f "$here/monaibundle/main.py" ]; then
  # the sample apps ship with the monailabel package; this copies the one our app subclasses
  "$env_dir/bin/python" -m monailabel.main apps --download --name monaibundle --output "$here/sample-apps"
  mv "$here/sample-apps/monaibundle" "$here/monaibundle" && rmdir "$here/sample-apps"
fi
echo "MONAI Label environment ready: $env_dir"
echo "next: bash $here/serve.sh /path/to/images   (see README.md)"
