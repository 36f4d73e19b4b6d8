"""Stage 4: translate a city's plain tiles with the ONNX generator (TensorRT, CUDA or CPU) into a tile set.

It runs models by the ONNX I/O contract in `components.core.onnx_io` and writes the tile-set format
of `components.core.tileset`."""
