"""Stage 4: translate a city's plain tiles with the ONNX generator (TensorRT, CUDA or CPU) into a tile set."""
