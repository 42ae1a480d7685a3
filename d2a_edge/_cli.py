"""Argument types shared by the SDK's command lines (d2a-demo, d2a-bench)."""
from __future__ import annotations

import argparse


def at_least(lo: int):
    """argparse ``type`` for an integer >= ``lo`` (a usage error otherwise)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    parse.__name__ = f"integer >= {lo}"  # how argparse names the type in its message
    return parse
