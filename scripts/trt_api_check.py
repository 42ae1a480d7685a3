"""Check the TensorRT names d2a-edge calls against real TensorRT Python bindings, without a GPU.

TensorRT cannot be installed on the development machine (the ``tensorrt-cu*-libs`` packages
fetch the libraries from a host other than PyPI) and is too large to carry to the lent GPU
machine. The bindings wheels are on PyPI, though (about 1 MB each). Their ``tensorrt.so``
cannot load without ``libnvinfer``, but, as a pybind11 module, it holds every method, property,
enum value and keyword-argument name it defines as a string. This script collects the names
that ``export/tensorrt_build.py`` and ``d2a_edge/trt_runtime.py`` use on TensorRT objects (by
walking their syntax tree) and looks each one up in the strings of each wheel given:

    pip download --no-deps -d wheels tensorrt-cu12-bindings==10.3.0 \\
        tensorrt-cu13-bindings==11.4.0.106          # one wheel per version to check
    python scripts/trt_api_check.py wheels/*.whl

A name counts as present when it is a whole string of the module, or the tail of one: the linker
stores a string that ends another only once (``INT8`` can live in the tail of ``UINT8``), so
some short enum names appear only that way. A tail match is weaker evidence, and the report
lists those names. A name that is present may still
be called wrongly (arguments, types, semantics); a missing name is a certain error on that
version. The builder flags are checked only for the versions
that use them (``builder_plan``: TensorRT 10).
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "export" / "tensorrt_build.py", ROOT / "d2a_edge" / "trt_runtime.py")
# the variables (as written in SOURCES) that hold the tensorrt module or TensorRT objects
TRT_OBJECTS = {"trt", "self.trt", "self.runtime", "builder", "network", "parser", "config",
               "profile", "tensor", "cache", "self.engine", "self.context", "trt.Logger",
               "trt.MemoryPoolType", "trt.TensorIOMode"}


def used_names(sources=SOURCES) -> dict[str, set[str]]:
    """{name: {where it is used}} for attributes of TRT_OBJECTS and keyword arguments of calls
    on them, from the syntax trees of ``sources``."""
    names: dict[str, set[str]] = {}
    for path in sources:
        tree = ast.parse(Path(path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) in TRT_OBJECTS:
                names.setdefault(node.attr, set()).add(f"{Path(path).name}: {ast.unparse(node)}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and ast.unparse(node.func.value) in TRT_OBJECTS:
                for kw in node.keywords:
                    if kw.arg:
                        names.setdefault(kw.arg, set()).add(
                            f"{Path(path).name}: {ast.unparse(node.func)}({kw.arg}=...)")
    return names


def builder_flags(major: int) -> set[str]:
    """The ``trt.BuilderFlag`` names ``builder_plan`` uses on this major version."""
    from d2a_edge.export.tensorrt_build import builder_plan

    class Version:  # builder_plan reads only __version__
        __version__ = f"{major}.0"
    return {f for p in ("fp32", "fp16", "int8") for f in builder_plan(Version, p)["flags"]}


def wheel_strings(wheel: Path) -> tuple[str, set[str]]:
    """(TensorRT version, the NUL-terminated strings of the bindings' .so and the identifiers
    of its Python files)."""
    version = re.search(r"bindings-(\d+\.\d+[\d.]*?)(?:\.post\d+)?-", wheel.name)
    if version is None:
        raise SystemExit(f"{wheel}: not a tensorrt-cu*-bindings wheel")
    strings: set[str] = set()
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith(".so"):
                strings.update(m.decode() for m in re.findall(rb"[\x20-\x7e]{3,}(?=\x00)", data))
            elif info.filename.endswith(".py"):
                strings.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", data.decode()))
    return version.group(1), strings


def present(name: str, strings: set[str]) -> str | None:
    """"exact" when ``name`` is a string of the module, "tail" when it only ends one (the
    linker's tail merging: ``INT8`` can live in the tail of ``UINT8``), else None."""
    if name in strings:
        return "exact"
    return "tail" if any(s.endswith(name) for s in strings) else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheels", nargs="+", type=Path, help="tensorrt-cu*-bindings wheels")
    args = p.parse_args(argv)
    names = used_names()
    print(f"{len(names)} TensorRT names used by {', '.join(s.name for s in SOURCES)}")
    failed = 0
    for wheel in sorted(args.wheels):
        version, strings = wheel_strings(wheel)
        major = int(version.split(".")[0])
        wanted = set(names) | builder_flags(major)
        found = {n: present(n, strings) for n in wanted}
        missing = sorted(n for n, how in found.items() if how is None)
        tail = sorted(n for n, how in found.items() if how == "tail")
        print(f"TensorRT {version}: {len(wanted) - len(missing)} of {len(wanted)} present"
              + (f" ({len(tail)} only as a string's tail: {', '.join(tail)})" if tail else "")
              + (f"; MISSING: {', '.join(missing)}" if missing else ""))
        for name in missing:
            for where in sorted(names.get(name, {f"builder_plan: BuilderFlag.{name}"})):
                print(f"    {name}: {where}")
        failed += bool(missing)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
