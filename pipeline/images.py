"""The container image of each stage: one place for the tags the pipelines name and `make images` builds.

`{registry}/{stage}:{version}`, the version being the project's. The pipelines are built for a
registry (`build_pipelines(registry=...)`, `locgen compile --registry`); the committed YAML names the
default, a registry on the local machine, as a kind or minikube cluster uses.
"""

import os

from components import __version__

DEFAULT_REGISTRY = "localhost:5000/locgen"
REGISTRY_ENV = "LOCGEN_IMAGE_REGISTRY"  # read by `locgen compile` and images/build.sh, never at import
STAGE_IMAGES = ("render", "train", "export", "infer", "extract")


def image(stage: str, registry: str = DEFAULT_REGISTRY) -> str:
    if stage not in STAGE_IMAGES:
        raise ValueError(f"no image for stage {stage!r}; stages: {', '.join(STAGE_IMAGES)}")
    return f"{registry.rstrip('/')}/{stage}:{__version__}"


if __name__ == "__main__":  # `python -m pipeline.images`: "stage image" lines, what images/build.sh builds
    for stage in STAGE_IMAGES:
        print(stage, image(stage, os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY)))
