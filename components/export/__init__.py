"""Stage 3: export the trained generator to ONNX (fp32 and an fp16 variant for TensorRT), checked against PyTorch.

What it writes follows the ONNX I/O contract in `components.core.onnx_io`; it loads train's generator
network and file (`components.train.networks`, `components.train.generator_file`), its only use of
another stage."""
