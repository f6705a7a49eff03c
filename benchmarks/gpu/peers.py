#!/usr/bin/env python3
"""Peer baselines for benchmarks/gpu/bench_gpu_attention on the *dense* problem (every head global).

torch SDPA with the flash backend for prefill and for decode (q_len = 1), and FlashInfer's paged decode / prefill
where `import flashinfer` works. One JSON object per line on stdout, same fields as the C++ benchmark, so
scripts/gpu.sh can put them side by side in one file.

    python3 benchmarks/gpu/peers.py decode  --batch 64 --contexts 32768
    python3 benchmarks/gpu/peers.py prefill --contexts 8192,16384,32768
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F


def timed(fn, iters, flush):
    """Median ms over iters runs after 3 warm-ups, L2 flushed before each (outside the timed region)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        flush.zero_()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def sdpa_flash(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        except RuntimeError:
            # Older flash paths lack GQA: repeat K/V (costs memory traffic; reported as such).
            g = q.shape[1] // k.shape[1]
            return F.scaled_dot_product_attention(
                q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=causal)


def emit(**kw):
    print(json.dumps(kw), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["decode", "prefill"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--contexts", default="")
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("peers.py: no CUDA device", file=sys.stderr)
        return 4
    dev = torch.cuda.get_device_name()
    contexts = [int(x) for x in a.contexts.split(",") if x] or (
        [8192, 16384, 32768] if a.mode == "prefill" else [32768])
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
    Hq, Hk, D = a.q_heads, a.kv_heads, a.head_dim
    dt = torch.bfloat16
    try:
        import flashinfer  # noqa: F401
        have_fi = True
    except Exception:  # not installed, or no build for this GPU
        have_fi = False
    common = dict(device=dev, q_heads=Hq, kv_heads=Hk, head_dim=D, problem="dense", global_ratio=1.0)

    for L in contexts:
        if a.mode == "prefill":
            q = torch.randn(1, Hq, L, D, dtype=dt, device="cuda")
            k = torch.randn(1, Hk, L, D, dtype=dt, device="cuda")
            v = torch.randn(1, Hk, L, D, dtype=dt, device="cuda")
            flops = L * (L + 1) / 2 * Hq * 4 * D
            ms = timed(lambda: sdpa_flash(q, k, v, True), max(3, a.iters // 4), flush)
            emit(bench="prefill", impl="torch_sdpa_flash", batch=1, context=L, ms=ms, flops=flops,
                 tflops=flops / (ms * 1e-3) / 1e12, **common)
            if have_fi:
                try:
                    import flashinfer
                    o = lambda: flashinfer.single_prefill_with_kv_cache(  # noqa: E731
                        q[0].transpose(0, 1), k[0].transpose(0, 1).contiguous(),
                        v[0].transpose(0, 1).contiguous(), causal=True)
                    ms = timed(o, max(3, a.iters // 4), flush)
                    emit(bench="prefill", impl="flashinfer", batch=1, context=L, ms=ms, flops=flops,
                         tflops=flops / (ms * 1e-3) / 1e12, **common)
                except Exception as e:  # report, do not fail the run
                    emit(bench="prefill", impl="flashinfer", context=L, error=str(e)[:200], **common)
            del q, k, v
        else:
            B = a.batch
            q = torch.randn(B, Hq, 1, D, dtype=dt, device="cuda")
            k = torch.randn(B, Hk, L, D, dtype=dt, device="cuda")
            v = torch.randn(B, Hk, L, D, dtype=dt, device="cuda")
            nbytes = 2 * B * Hk * L * D * 2
            ms = timed(lambda: sdpa_flash(q, k, v, False), a.iters, flush)
            emit(bench="decode", impl="torch_sdpa_flash", batch=B, context=L, ms=ms, bytes=nbytes,
                 gbs=nbytes / (ms * 1e-3) / 1e9, **common)
            del q, k, v
            if have_fi:
                try:
                    import flashinfer
                    ps = a.page_size
                    pages_per_seq = (L + ps - 1) // ps
                    kv = torch.randn(B * pages_per_seq, 2, ps, Hk, D, dtype=dt, device="cuda")
                    indptr = torch.arange(0, B + 1, dtype=torch.int32, device="cuda") * pages_per_seq
                    indices = torch.arange(0, B * pages_per_seq, dtype=torch.int32, device="cuda")
                    last = torch.full((B,), (L - 1) % ps + 1, dtype=torch.int32, device="cuda")
                    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
                    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
                    w.plan(indptr, indices, last, Hq, Hk, D, ps, q_data_type=dt)
                    qq = torch.randn(B, Hq, D, dtype=dt, device="cuda")
                    ms = timed(lambda: w.run(qq, kv), a.iters, flush)
                    emit(bench="decode", impl="flashinfer", batch=B, context=L, ms=ms, bytes=nbytes,
                         gbs=nbytes / (ms * 1e-3) / 1e9, **common)
                    del kv
                except Exception as e:
                    emit(bench="decode", impl="flashinfer", context=L, error=str(e)[:200], **common)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
