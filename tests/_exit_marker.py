"""For the spawned-worker exit test: importing this module registers an ``atexit`` handler that,
in a process other than the test's own, writes ``$D2A_EXIT_MARKER.<pid>`` during the
interpreter's teardown. A DataLoader worker imports it (before ``worker_init_fn`` runs) when it
unpickles ``Numbers``."""
import atexit
import os

import torch


def _mark() -> None:
    path = os.environ.get("D2A_EXIT_MARKER")
    if path and str(os.getpid()) != os.environ.get("D2A_EXIT_MARKER_PARENT"):
        with open(f"{path}.{os.getpid()}", "w") as f:
            f.write("interpreter teardown ran\n")


atexit.register(_mark)


class Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)
