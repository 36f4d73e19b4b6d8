"""The `locgen` command: the top of the project, over the stages (`components`) and the Kubeflow
pipelines (`pipeline`); nothing below imports it."""
