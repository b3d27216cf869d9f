#!/usr/bin/env bash
# Serve the trained ct_classification bundle with MONAI Label (environment from build_env.sh).
#   bash integrations/monailabel/serve.sh STUDIES_DIR [ENV_DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
studies="${1:?usage: serve.sh STUDIES_DIR [ENV_DIR]}"
env_dir="${2:-$here/.venv}"
bundle="$here/../../bundles/ct_classification"
[ -f "$bundle/models/model.pt" ] || { echo "error: $bundle/models/model.pt missing: train the bundle first" >&2; exit 2; }
mkdir -p "$here/model"
rm -rf "$here/model/ct_classification" && cp -r "$bundle" "$here/model/ct_classification"
exec "$env_dir/bin/python" -m monailabel.main start_server --app "$here" --studies "$studies" \
  --conf models ct_classification --conf zoo_source github --conf skip_trainers true
