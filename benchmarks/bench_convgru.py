"""Fused-gate ConvGRU vs the straightforward per-gate implementation; depthwise vs standard gates.

Forward + backward over a sequence (``outputs.sum()`` as the loss), same weights, same inputs:

* ``per-gate`` (baseline): six separate convolutions per step (``W_ir, W_iz, W_in`` on ``x``,
  ``W_hr, W_hz, W_hn`` on ``h``), the fused weights split out - the textbook implementation;
* ``fused cell``: :class:`~mslightning.nn.ConvGRUCell` called step by step (two convolutions per
  step, one of ``x`` and one of ``h``, each with ``3·hidden`` outputs);
* ``ConvGRU``: :class:`~mslightning.nn.ConvGRU`, the fused cell with the input convolution of
  all ``T`` steps done in one call before the loop.

Outputs and parameter gradients of all three are asserted equal (to float32 rounding). Then
``depthwise=True`` against standard gates: parameters and throughput of ``ConvGRU``. Variants
are timed in interleaved rounds (a different order every round) so that machine drift hits
all alike; medians and ratios are reported, once per thread count.

Two configurations by default: 64 -> 64 channels on 16x16 (convolution-bound on a CPU) and
16 -> 16 on 8x8 (a small modulator, overhead-bound).

Run: ``python benchmarks/bench_convgru.py [--batch 8] [--steps 10] [--shapes 64,64,16 16,16,8]
[--kernel 3] [--repeats 7] [--threads 1 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from mslightning.nn import ConvGRU, ConvGRUCell


def per_gate_sequence(cell: ConvGRUCell, x: Tensor) -> Tensor:
    """Baseline: six convolutions per step, weights split out of the fused cell (views, same grads)."""
    hid, pad = cell.hidden_channels, cell.kernel_size // 2
    wx, wh = cell.conv_x.weight.split(hid), cell.conv_h.weight.split(hid)
    bx, bh = cell.conv_x.bias.split(hid), cell.conv_h.bias.split(hid)
    h = x.new_zeros(x.shape[0], hid, *x.shape[-2:])
    states = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r = torch.sigmoid(F.conv2d(xt, wx[0], bx[0], padding=pad) + F.conv2d(h, wh[0], bh[0], padding=pad))
        z = torch.sigmoid(F.conv2d(xt, wx[1], bx[1], padding=pad) + F.conv2d(h, wh[1], bh[1], padding=pad))
        n = torch.tanh(F.conv2d(xt, wx[2], bx[2], padding=pad) + r * F.conv2d(h, wh[2], bh[2], padding=pad))
        h = (1 - z) * n + z * h
        states.append(h)
    return torch.stack(states, dim=1)


def fused_cell_sequence(cell: ConvGRUCell, x: Tensor) -> Tensor:
    h, states = None, []
    for t in range(x.shape[1]):
        _, h = cell(x[:, t], h)
        states.append(h)
    return torch.stack(states, dim=1)


def step(fn: Callable[[], Tensor], params: list[torch.nn.Parameter]) -> tuple[float, Tensor]:
    for p in params:
        p.grad = None
    start = time.perf_counter()
    out = fn()
    out.sum().backward()
    return time.perf_counter() - start, out.detach()


def measure(variants: dict[str, tuple[Callable[[], Tensor], list]], repeats: int) -> dict[str, float]:
    names = list(variants)
    for name in names:  # warm-up
        step(*variants[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        order = names[shift:] + names[:shift]
        if round_ % 2:
            order.reverse()
        for name in order:
            times[name].append(step(*variants[name])[0])
    return {name: statistics.median(values) for name, values in times.items()}


def run_shape(args: argparse.Namespace, channels: int, hidden: int, size: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.steps, channels, size, size)
    model = ConvGRU(channels, hidden, args.kernel)
    cell = model.cell
    params = list(model.parameters())
    depthwise = ConvGRU(channels, hidden, args.kernel, depthwise=True)
    dw_params = list(depthwise.parameters())

    variants = {
        "per-gate (6 convs/step)": (lambda: per_gate_sequence(cell, x), params),
        "fused cell (2 convs/step)": (lambda: fused_cell_sequence(cell, x), params),
        "ConvGRU (fused, input conv hoisted)": (lambda: model(x)[0], params),
        "ConvGRU depthwise": (lambda: depthwise(x)[0], dw_params),
    }

    # Same outputs and same gradients for the three implementations of the standard cell.
    results = {}
    for name in list(variants)[:3]:
        _, out = step(*variants[name])
        results[name] = (out, [p.grad.clone() for p in params])
    ref_out, ref_grads = results["per-gate (6 convs/step)"]
    max_out = max_grad = 0.0
    for out, grads in results.values():
        max_out = max(max_out, (out - ref_out).abs().max().item())
        for g, r in zip(grads, ref_grads, strict=True):
            max_grad = max(max_grad, ((g - r).abs().max() / r.abs().max()).item())
    assert max_out < 1e-5 and max_grad < 1e-4, (max_out, max_grad)

    n_std, n_dw = sum(p.numel() for p in params), sum(p.numel() for p in dw_params)
    print(
        f"\n## B={args.batch} T={args.steps} {channels}->{hidden} channels, {size}x{size}, k={args.kernel}, "
        f"forward + backward over the sequence, {args.repeats} interleaved repeats, torch {torch.__version__}\n"
    )
    print(f"max |output - per-gate| = {max_out:.1e}, max relative gradient difference = {max_grad:.1e}")
    print(f"parameters: standard {n_std:,}, depthwise {n_dw:,} ({100 * (1 - n_dw / n_std):.1f}% fewer)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        medians = measure(variants, args.repeats)
        base = medians["per-gate (6 convs/step)"]
        standard = medians["ConvGRU (fused, input conv hoisted)"]
        print(f"\nthreads={threads}\n")
        print("| implementation | median fwd+bwd | speed-up vs per-gate | throughput vs standard ConvGRU |")
        print("|---|---|---|---|")
        for name, median in medians.items():
            print(f"| {name} | {median * 1e3:.1f} ms | {base / median:.2f}x | {standard / median:.2f} |")


def shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"a shape is 'C_in,hidden,size', got {text!r}")
    c, h, s = (int(p) for p in parts)
    return c, h, s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="sequence length T")
    parser.add_argument(
        "--shapes",
        type=shape,
        nargs="+",
        default=[(64, 64, 16), (16, 16, 8)],
        help="'C_in,hidden,size' (size = height = width) per configuration",
    )
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    for channels, hidden, size in args.shapes:
        run_shape(args, channels, hidden, size)


if __name__ == "__main__":
    main()
