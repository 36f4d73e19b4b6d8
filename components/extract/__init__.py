"""Stage 5: turn the markers of generated tiles back into points, and score points against real ones."""
