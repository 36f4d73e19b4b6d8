# One place for the commands a newcomer and CI use. VENV is created by `make install`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
# Restated in every pip call: an unpinned resolve pulls a newer torch with CUDA packages.
CONSTRAINTS := -c constraints.txt

.PHONY: install test demo bench pretrained

$(PYTHON):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

install: $(PYTHON)
	$(PIP) install $(CONSTRAINTS) -e '.[test,train,export]'

test: install
	$(VENV)/bin/ruff check components pipeline tests benchmarks
	$(PYTHON) -m pytest -q

# The main job on the bundled sample data: render training pairs for central Helsinki around its
# OSM bicycle stations and parkings and the 5 x 5 grid of Kotka to generate for, turn the Helsinki
# markers back into points (with a preview) and score them against the real ones, then run the
# bundled generator on Kotka (ONNX Runtime) and extract the positions it predicts.
demo: install
	$(VENV)/bin/locgen render --osm data/osm/helsinki-center.osm.pbf --city helsinki --out out/helsinki \
		--pairs 200 --locations osm:amenity=bicycle_rental,amenity=bicycle_parking --workers 0
	$(VENV)/bin/locgen render --osm data/osm/kotka-karhula.osm.pbf --city kotka --out out/kotka \
		--center 60.53,26.95 --grid 5 --workers 0
	$(VENV)/bin/locgen extract --tiles out/helsinki --domain a --out out/helsinki-points.csv \
		--preview out/helsinki-preview.png
	$(VENV)/bin/locgen evaluate --generated out/helsinki-points.csv --bbox 24.9380,60.1660,24.9520,60.1780 \
		--truth osm:amenity=bicycle_rental,amenity=bicycle_parking --osm data/osm/helsinki-center.osm.pbf \
		--out out/helsinki-report.json
	$(VENV)/bin/locgen generate --tiles out/kotka --out out/kotka-generated
	$(VENV)/bin/locgen extract --tiles out/kotka-generated --out out/kotka-points.geojson \
		--preview out/kotka-preview.png

# The bundled pretrained generator and its ONNX export (components/pretrained/README.md): the commands
# that made them.
# About 35 minutes on 2 CPU cores; a GPU, when there is one, is used and takes minutes.
pretrained: install
	$(VENV)/bin/locgen render --osm data/osm/helsinki-center.osm.pbf --city helsinki --out out/pretrained/train \
		--pairs 400 --locations osm:amenity=bicycle_rental,amenity=bicycle_parking --marker-radius-px 5 \
		--holdout 24.9351,60.1641,24.9535,60.1680 --seed 0 --workers 0
	$(VENV)/bin/locgen train --data out/pretrained/train --out out/pretrained/run --preset tiny --steps 8000
	cp out/pretrained/run/generator.pt components/pretrained/tiny-helsinki.pt
	$(VENV)/bin/locgen export --out components/pretrained/tiny-helsinki.onnx

bench: install
	$(PYTHON) benchmarks/bench_render.py
	$(PYTHON) benchmarks/bench_extract.py
	$(PYTHON) benchmarks/bench_evaluate.py
