"""Stage 1: render exactly georeferenced map tiles (domain b) and tiles with markers (domain a)."""
