"""One 3x3 convolution in fp32 and in bf16 on this CPU (issue 18): why bf16 inference and training are slower
here than fp32. Prints process CPU time per call at one thread, the bf16/fp32 ratio for each memory layout,
and the oneDNN kernel that ran each (from ``ONEDNN_VERBOSE``, in a child process).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bf16_conv.py [--channels 64] [--size 128] [--calls 20]

bf16 gains on a CPU only where its bf16 dot-product units outrun its fp32 FMAs: AMX tiles (Intel Sapphire
Rapids and later) or AVX512-BF16 on cores that issue it at twice the fp32 rate. Where ``avx512_core_bf16``
kernels run no faster per instruction than fp32 FMAs, the bf16 conversions make the whole network slower.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch


def seconds_per_call(conv: torch.nn.Conv2d, images: torch.Tensor, calls: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            conv(images)
        start = time.process_time()
        for _ in range(calls):
            conv(images)
    return (time.process_time() - start) / calls


def kernels(channels: int, size: int) -> dict[str, str]:
    """The oneDNN implementation of the forward convolution per (layout, dtype), from ONEDNN_VERBOSE."""
    code = (f"import torch; torch.set_num_threads(1)\n"
            f"for cl in (False, True):\n"
            f"  for dt in (torch.float32, torch.bfloat16):\n"
            f"    c = torch.nn.Conv2d({channels}, {channels}, 3, padding=1).to(dt)\n"
            f"    x = torch.randn(1, {channels}, {size}, {size}).to(dt)\n"
            f"    if cl: c, x = c.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)\n"
            f"    print('CASE', 'channels_last' if cl else 'NCHW', dt, flush=True)\n"
            f"    with torch.inference_mode(): c(x)\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1"}).stdout
    found, case = {}, None
    for line in output.splitlines():
        if line.startswith("CASE"):
            case = " ".join(line.split()[1:])
        elif case and ",convolution," in line and ",exec," in line:
            found.setdefault(case, line.split(",")[6])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = kernels(args.channels, args.size)
    print(f"Conv2d {args.channels}->{args.channels}, 3x3, 1x{args.channels}x{args.size}x{args.size}, 1 thread, "
          f"process CPU time")
    for layout, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        times = {}
        for dtype in (torch.float32, torch.bfloat16):
            conv = torch.nn.Conv2d(args.channels, args.channels, 3, padding=1).to(dtype).eval()
            images = torch.randn(1, args.channels, args.size, args.size).to(dtype)
            conv, images = conv.to(memory_format=memory_format), images.to(memory_format=memory_format)
            times[dtype] = seconds_per_call(conv, images, args.calls)
            print(f"  {layout:13s} {str(dtype):15s} {1000 * times[dtype]:7.2f} ms  "
                  f"oneDNN: {names.get(f'{layout} {dtype}', 'not oneDNN (ATen)')}")
        print(f"  {layout:13s} bf16 speed vs fp32: {times[torch.float32] / times[torch.bfloat16]:.2f}x")


if __name__ == "__main__":
    main()
