"""The D2A-HMR model (``D2AHMR``) and its parts; build one with ``build_model(cfg, asset)``."""
from d2a_edge.training.model.d2a_hmr import D2AHMR, count_parameters
from d2a_edge.training.model.heads import cam_crop_to_full, rot6d_to_rotmat, rotmat_to_rot6d

__all__ = ["D2AHMR", "build_model", "cam_crop_to_full", "count_parameters", "rot6d_to_rotmat",
           "rotmat_to_rot6d"]


def build_model(cfg, asset=None) -> D2AHMR:
    """``D2AHMR`` for ``cfg`` (a ``ModelConfig``); loads ``cfg.body`` when no asset is given."""
    if asset is None:
        from d2a_edge.body import load_body
        asset = load_body(cfg.body)
    return D2AHMR(cfg, asset)
