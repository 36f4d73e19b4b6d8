"""The container image of each stage: one place for the tags the pipelines name and `make images` builds.

`{registry}/{stage}:{tag}`. Images are built with an immutable tag per commit (`commit_tag`:
`{version}-{commit}`), since KFP's cache key holds a task's image tag, not its digest: a tag that
moved would let a cached result of the old code stand for the new. The pipelines are built for a
registry and a tag (`build_pipelines(registry=..., tag=...)`, `locgen compile --registry --tag`);
the committed YAML names the default, `{version}` on a registry of the local machine, as a kind or
minikube cluster uses. The render image carries the pipelines compiled for its own registry and tag
(images/Dockerfile), so what it submits (the retraining CronJob) names the images it came with.
"""

import os

from components import __version__

DEFAULT_REGISTRY = "localhost:5000/locgen"
DEFAULT_TAG = __version__
REGISTRY_ENV = "LOCGEN_IMAGE_REGISTRY"  # read by `locgen compile` and images/build.sh, never at import
TAG_ENV = "LOCGEN_IMAGE_TAG"  # likewise; images/build.sh sets it to commit_tag of the checkout when unset
STAGE_IMAGES = ("render", "train", "export", "infer", "extract")


def image(stage: str, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG) -> str:
    if stage not in STAGE_IMAGES:
        raise ValueError(f"no image for stage {stage!r}; stages: {', '.join(STAGE_IMAGES)}")
    return f"{registry.rstrip('/')}/{stage}:{tag}"


def commit_tag(commit: str) -> str:
    """The immutable tag of a commit's images: the project's version and the commit's first 12 hex digits."""
    return f"{__version__}-{commit[:12]}"


if __name__ == "__main__":  # `python -m pipeline.images`: "stage image" lines, what images/build.sh builds
    for stage in STAGE_IMAGES:
        print(stage, image(stage, os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY), os.environ.get(TAG_ENV, DEFAULT_TAG)))
