"""Inputs shared by the stages: OpenStreetMap data (files or Overpass) and location sources."""
