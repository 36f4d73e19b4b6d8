"""The shared contracts every stage builds on, one module each: geo math (`geo`), storage (`storage`),
the tile-set format and reader (`tileset`), the map style (`style`), the marker colour (`markers`)
and detector (`detect`), one-to-one point matching (`matching`), the ONNX I/O contract (`onnx_io`),
point tables as CSV or GeoJSON (`points`), settings declared once (`settings`), PNG metadata,
provenance and errors. It imports no stage."""
