"""Stage 1: render exactly georeferenced map tiles (domain b) and tiles with markers (domain a).

The tile-set format it writes and the map style are shared contracts in `components.core`; the OSM
reader is in `components.sources`."""
