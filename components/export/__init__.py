"""Stage 3: export the trained generator to ONNX (fp32 and an fp16 variant for TensorRT), checked against PyTorch."""
