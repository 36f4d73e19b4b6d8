"""Stage 2: train FastCUT (plain tiles, domain b -> tiles with markers, domain a).

It reads tile sets through `components.core.tileset` and counts painted dots with the shared
detector (`components.core.detect`); `generator_file` is the file the export stage loads."""
