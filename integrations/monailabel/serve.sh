#!/usr/bin/env bash
# Serve the trained ct_classification bundle with MONAI Label (environment from build_env.sh).
#   bash integrations/monailabel/serve.sh STUDIES_DIR [--host H] [--port P] [--models DIR] [--env DIR] [-- ARGS]
# --host: the interface to listen on, 127.0.0.1 (this machine only) unless told otherwise; MONAI Label itself
#         would listen on every interface without authentication (README.md: switch authentication on first)
# --port: 8000 by default
# --models: the trained model's folder (model.pt and model.json), bundles/ct_classification/models by default
# --env: MONAI Label's environment, integrations/monailabel/.venv by default
# -- ARGS: passed on to `monailabel start_server` (--ssl_certfile, --ssl_keyfile, --workers...)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bundle="$(cd "$here/../../bundles/ct_classification" && pwd)"
usage="usage: serve.sh STUDIES_DIR [--host H] [--port P] [--models DIR] [--env DIR] [-- MONAI_LABEL_ARGS]"
studies="${1:?$usage}"; shift
host=127.0.0.1; port=8000; models="$bundle/models"; env_dir="$here/.venv"; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host="${2:?$usage}"; shift 2 ;;
    --port) port="${2:?$usage}"; shift 2 ;;
    --models) models="${2:?$usage}"; shift 2 ;;
    --env) env_dir="${2:?$usage}"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1; $usage" >&2; exit 2 ;;
  esac
done
[ -d "$studies" ] || { echo "error: studies folder $studies does not exist" >&2; exit 2; }
[ -f "$models/model.pt" ] || { echo "error: $models/model.pt missing: train the bundle first (README.md)" >&2; exit 2; }
[ -x "$env_dir/bin/python" ] || { echo "error: no MONAI Label environment at $env_dir: run $here/build_env.sh" >&2; exit 2; }
# the served copy: the bundle's configs and docs with the trained model and the settings it was trained with
served="$here/model/ct_classification"
rm -rf "$served" && mkdir -p "$served/models"
for item in "$bundle"/*; do
  case "$(basename "$item")" in models|logs|eval|cache) ;; *) cp -r "$item" "$served/" ;; esac
done
cp "$models/model.pt" "$served/models/"
[ ! -f "$models/model.json" ] || cp "$models/model.json" "$served/models/"
echo "serving $models on http://$host:$port (studies: $studies)"
exec "$env_dir/bin/python" -m monailabel.main start_server --app "$here" --studies "$studies" \
  --host "$host" --port "$port" --conf models ct_classification --conf preload false ${extra[@]+"${extra[@]}"}
