# One place for the commands a newcomer and CI use. VENV is created by `make install`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
# Restated in every pip call: an unpinned resolve pulls a newer torch with CUDA packages.
CONSTRAINTS := -c constraints.txt

.PHONY: install test demo demo-pretrained bench pretrained pipeline images

$(PYTHON):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

install: $(PYTHON)
	$(PIP) install $(CONSTRAINTS) -e '.[test,train,export]'

test: install
	$(VENV)/bin/ruff check components pipeline tests benchmarks
	$(PYTHON) -m pytest -q --durations=15

# The main job on the bundled sample data: the end-to-end Kubeflow pipeline, run here through kfp.local.
# It trains the tiny preset on central Helsinki, generates for Kotka and for the held-out part of Helsinki
# (scored against its real bicycle stations and parkings), and extracts the points (about 9 minutes on
# 2 CPU cores). demo-pretrained skips training and uses the bundled generator (seconds).
demo: install
	$(VENV)/bin/locgen run

demo-pretrained: install
	$(VENV)/bin/locgen run --pretrained

# The bundled pretrained generator and its ONNX export (components/pretrained/README.md): the commands
# that made them.
# About 35 minutes on 2 CPU cores; a GPU, when there is one, is used and takes minutes.
pretrained: install
	$(VENV)/bin/locgen render --osm data/osm/helsinki-center.osm.pbf --city helsinki --out out/pretrained/train \
		--pairs 400 --locations osm:amenity=bicycle_rental,amenity=bicycle_parking --marker-radius-px 5 \
		--holdout 24.9351,60.1641,24.9535,60.1680 --seed 0 --workers 0
	$(VENV)/bin/locgen train --data out/pretrained/train --out out/pretrained/run --preset tiny --steps 8000 \
		--resume-if-any
	cp out/pretrained/run/generator.pt components/pretrained/tiny-helsinki.pt
	$(VENV)/bin/locgen export --out components/pretrained/tiny-helsinki.onnx

# The compiled pipelines (pipeline/*.yaml) are committed; the tests fail when they are stale.
pipeline: install
	$(VENV)/bin/locgen compile

# Every stage's image, built and pushed to $(LOCGEN_IMAGE_REGISTRY) (default localhost:5000/locgen) with the
# tags the pipelines name; compile the pipelines for that registry too: locgen compile --registry ...
images: install
	PYTHON=$(PYTHON) images/build.sh --push

bench: install
	$(PYTHON) benchmarks/bench_render.py
	$(PYTHON) benchmarks/bench_extract.py
	$(PYTHON) benchmarks/bench_evaluate.py
