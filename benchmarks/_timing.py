"""Shared child-process code of the benchmark scripts: time ``step()`` for at least
``MIN_SECONDS`` (and 3 calls), synchronising CUDA; leaves ``n`` calls in ``dt`` seconds."""

TIMED_LOOP = r"""
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < MIN_SECONDS or n < 3:
    step(); n += 1
if device == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
"""
