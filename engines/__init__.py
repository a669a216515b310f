"""Device-side backends, one file each (ONNX Runtime, TensorRT); registered in ``nanotrt.runtime.backend``."""
