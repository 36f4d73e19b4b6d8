#!/usr/bin/env bash
# Build every stage's image, tagged exactly as the compiled pipelines name them, and with --push push it:
# each is its stage's target of images/Dockerfile (docker build --target render, --target train, ...).
#
#   LOCGEN_IMAGE_REGISTRY=registry.example.com/locgen images/build.sh --push
#   locgen compile --registry registry.example.com/locgen     # pipelines that name those images
#
# The registry: $LOCGEN_IMAGE_REGISTRY (default localhost:5000/locgen, a kind or minikube registry); the
# tag: the project's version. Run from anywhere; the build context is the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
push=false
if [[ "${1:-}" == "--push" ]]; then
    push=true
elif [[ $# -gt 0 ]]; then
    echo "usage: images/build.sh [--push]" >&2
    exit 2
fi
python="${PYTHON:-python3}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
version="$("$python" -c 'import components; print(components.__version__)')"
source="$(git remote get-url origin 2>/dev/null || echo unknown)"
"$python" -m pipeline.images | while read -r stage image; do
    echo "building $image" >&2
    docker build --file images/Dockerfile --target "$stage" --tag "$image" --build-arg "VERSION=$version" \
        --build-arg "REVISION=$revision" --build-arg "SOURCE=$source" .
    if $push; then
        docker push "$image"
    fi
done
