"""Console entry points of the commands whose code needs an optional extra (``[train]``).

``pip install d2a-edge`` installs the SDK alone; ``d2a-train`` and its siblings then import
torch, timm and the rest on their first line. These entry points import the command's module
themselves, so that a missing package gives a one-line error naming the extra instead of a
traceback. d2a-export and d2a-body check their extras themselves.
"""
from __future__ import annotations

import importlib
import sys


def _run(prog: str, module: str) -> int:
    """``module.main()``'s exit code, or 2 with a message when a package of ``[train]`` is
    missing (on import or later, e.g. the renderer's moderngl)."""
    try:
        return importlib.import_module(module).main() or 0
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "d2a_edge":  # our own bug: show it
            raise
        print(f"{prog}: error: needs the [train] extra, and {e.name!r} is not installed: "
              "pip install 'd2a-edge[train]'", file=sys.stderr)
        return 2


def train() -> int:
    return _run("d2a-train", "d2a_edge.training.train_cli")


def data() -> int:
    return _run("d2a-data", "d2a_edge.training.data.cli")


def evaluate() -> int:
    return _run("d2a-eval", "d2a_edge.training.evaluate")


def ablation() -> int:
    return _run("d2a-ablation", "d2a_edge.training.ablation")
