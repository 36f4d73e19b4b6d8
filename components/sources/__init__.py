"""Inputs shared by the stages: OpenStreetMap data (`osm`: files, and Overpass in `overpass`) and
location sources (`locations`). It imports only the core."""
