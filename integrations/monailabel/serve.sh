#!/usr/bin/env bash
# Serve a trained bundle (ct_classification, or ct_segmentation) with MONAI Label (environment from build_env.sh).
#   bash integrations/monailabel/serve.sh STUDIES_DIR [--bundle B] [--host H] [--port P] [--models DIR] [--env DIR]
#                                         [-- ARGS]
# --bundle: ct_classification (default) or ct_segmentation
# --host: the interface to listen on, 127.0.0.1 (this machine only) unless told otherwise; MONAI Label itself
#         would listen on every interface without authentication (README.md: switch authentication on first)
# --port: 8000 by default
# --models: the trained model's folder (model.pt and model.json), bundles/<bundle>/models by default
# --env: MONAI Label's environment, integrations/monailabel/.venv by default
# -- ARGS: passed on to `monailabel start_server` (--ssl_certfile, --ssl_keyfile, --workers...)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
usage="usage: serve.sh STUDIES_DIR [--bundle B] [--host H] [--port P] [--models DIR] [--env DIR] [-- MONAI_LABEL_ARGS]"
studies="${1:?$usage}"; shift
name=ct_classification; host=127.0.0.1; port=8000; models=""; env_dir="$here/.venv"; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) name="${2:?$usage}"; shift 2 ;;
    --host) host="${2:?$usage}"; shift 2 ;;
    --port) port="${2:?$usage}"; shift 2 ;;
    --models) models="${2:?$usage}"; shift 2 ;;
    --env) env_dir="${2:?$usage}"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1; $usage" >&2; exit 2 ;;
  esac
done
case "$name" in
  ct_classification|ct_segmentation) bundle="$repo/bundles/$name" ;;
  *) echo "error: unknown bundle $name: ct_classification or ct_segmentation" >&2; exit 2 ;;
esac
models="${models:-$bundle/models}"
[ -d "$studies" ] || { echo "error: studies folder $studies does not exist" >&2; exit 2; }
[ -f "$models/model.pt" ] || { echo "error: $models/model.pt missing: train the bundle first (README.md)" >&2; exit 2; }
[ -x "$env_dir/bin/python" ] || { echo "error: no MONAI Label environment at $env_dir: run $here/build_env.sh" >&2; exit 2; }
# the served copy: the bundle's configs and docs with the trained model and the settings it was trained with
served="$here/model/$name"
rm -rf "$served" && mkdir -p "$served/models"
for item in "$bundle"/*; do
  case "$(basename "$item")" in models|logs|eval|cache) ;; *) cp -r "$item" "$served/" ;; esac
done
cp "$models/model.pt" "$served/models/"
[ ! -f "$models/model.json" ] || cp "$models/model.json" "$served/models/"
# ct_segmentation's inference reads volumes and builds its U-Net with this project's package, which runs in MONAI
# Label's environment from the checkout (ct_classification's inference needs MONAI alone)
[ "$name" != ct_segmentation ] || export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
echo "serving $name from $models on http://$host:$port (studies: $studies)"
exec "$env_dir/bin/python" -m monailabel.main start_server --app "$here" --studies "$studies" \
  --host "$host" --port "$port" --conf models "$name" --conf preload false ${extra[@]+"${extra[@]}"}
