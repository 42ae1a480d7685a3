"""d2a-edge: real-time monocular 3D human mesh recovery for robots and edge GPUs.

The runtime imports numpy (+ OpenCV / ONNX Runtime when used) only: never torch, training or export.
"""
from d2a_edge.body import BodyAsset, BodyAssetError, BodyModel, load_body

__version__ = "0.1.0"
__all__ = ["BodyAsset", "BodyAssetError", "BodyModel", "load_body", "__version__"]
