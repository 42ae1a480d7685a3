"""Export subpackage (installed as ``d2a_edge.export``): fused ONNX, FP16/INT8, TensorRT."""
