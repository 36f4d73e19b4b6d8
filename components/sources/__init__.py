"""Inputs shared by the stages: OpenStreetMap data (`osm`: files, and Overpass in `overpass`) and
location sources (`locations`), fetched over http(s) with one account of failures (`web`). It
imports only the core."""
