"""Stage 5: turn the markers of generated tiles back into points, and score points against real ones.

The marker detector and point matching it uses are shared contracts in `components.core`."""
