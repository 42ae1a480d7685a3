"""Training subpackage (installed as ``d2a_edge.training``): data engine, model, losses, train/eval."""
