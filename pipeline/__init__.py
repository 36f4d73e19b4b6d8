"""Kubeflow Pipelines wiring of the stages (compiled pipeline YAML lives beside this package)."""
