"""Stage 2: train FastCUT (plain tiles, domain b -> tiles with markers, domain a)."""
