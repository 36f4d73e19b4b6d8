#!/usr/bin/env bash
# Build every stage's image, tagged exactly as the compiled pipelines name them, and with --push push it:
# each is its stage's target of images/Dockerfile (docker build --target render, --target train, ...).
#
#   export LOCGEN_IMAGE_REGISTRY=registry.example.com/locgen LOCGEN_IMAGE_TAG=0.1.0-$(git rev-parse --short=12 HEAD)
#   images/build.sh --push
#   locgen compile     # pipelines that name those images (both variables read)
#
# The registry: $LOCGEN_IMAGE_REGISTRY (default localhost:5000/locgen, a kind or minikube registry); the
# tag: $LOCGEN_IMAGE_TAG, by default VERSION-COMMIT (pipeline.images.commit_tag: immutable, since KFP's cache
# key holds the tag). The render image carries the pipelines compiled for that registry and tag. Compile the
# pipelines you submit from here with the same: LOCGEN_IMAGE_TAG=... locgen compile --registry ...
# Run from anywhere; the build context is the repository root.
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
export LOCGEN_IMAGE_REGISTRY="${LOCGEN_IMAGE_REGISTRY:-localhost:5000/locgen}"
export LOCGEN_IMAGE_TAG="${LOCGEN_IMAGE_TAG:-$("$python" -c "from pipeline.images import commit_tag; print(commit_tag('$revision'))")}"
echo "images: $LOCGEN_IMAGE_REGISTRY/*:$LOCGEN_IMAGE_TAG" >&2
"$python" -m pipeline.images | while read -r stage image; do
    echo "building $image" >&2
    docker build --file images/Dockerfile --target "$stage" --tag "$image" --build-arg "VERSION=$version" \
        --build-arg "REVISION=$revision" --build-arg "SOURCE=$source" \
        --build-arg "REGISTRY=$LOCGEN_IMAGE_REGISTRY" --build-arg "TAG=$LOCGEN_IMAGE_TAG" .
    if $push; then
        docker push "$image"
    fi
done
