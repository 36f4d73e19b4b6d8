"""Kubeflow Pipelines wiring of the stages: components, `build_pipelines`, the steps their bodies
call, local runs and submission (compiled pipeline YAML lives beside this package). It sits on the
stages; nothing in `components` imports it."""
