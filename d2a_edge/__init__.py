"""d2a-edge: real-time monocular 3D human mesh recovery for robots and edge GPUs.

``from d2a_edge import MeshRecoverer``; the runtime imports numpy, OpenCV and ONNX Runtime only
(TensorRT + cuda-python when present): never torch, training or export.
"""
from d2a_edge.backends import BackendUnavailable
from d2a_edge.body import BodyAsset, BodyAssetError, BodyModel, load_body
from d2a_edge.bundle import BundleError, load_bundle
from d2a_edge.imageio import InputError, SourceLost
from d2a_edge.recoverer import MeshRecoverer, default_intrinsics
from d2a_edge.types import HumanMesh

__version__ = "0.1.0"
__all__ = ["BackendUnavailable", "BodyAsset", "BodyAssetError", "BodyModel", "BundleError",
           "HumanMesh", "InputError", "MeshRecoverer", "SourceLost", "default_intrinsics",
           "load_body", "load_bundle", "__version__"]
