"""Timing candidate kernels the way a decode step runs them: inside a CUDA graph.

Timing single launches with events measures the host's launch cost as much as the kernel (a Triton
launch from Python takes longer than a small kernel runs), which favours whichever library launches
fastest. `graph_time_ms` captures `calls` calls back to back in one graph and times its replays.
"""

from __future__ import annotations

import torch


def graph_time_ms(fn, calls: int = 8, repeats: int = 7) -> float:
    """Median device time of one `fn(i)` call, i = 0..calls-1 (the callee may rotate inputs on i)."""
    for i in range(2):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    times.sort()
    return times[len(times) // 2]
