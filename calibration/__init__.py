"""Task data -> layer-wise calibration feeds -> quantized graphs (shared by ONNX Runtime and TensorRT builds)."""
