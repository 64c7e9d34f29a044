"""The prepared GPU check: one script, no hub access, under 8 minutes on one large GPU.

    python benchmarks/gpu_check.py            # needs a CUDA device; prints one table per part

1. Extraction throughput on a real architecture at its real size, random-initialised: DINOv2's ViT-g/14
   (timm `vit_giant_patch14_dinov2`, 1.1 B parameters) at 224 px, through prh-bench's extractor (every block's
   class token) against a plain timm forward loop on the same model and batches.
2. The engine on GPU against the same engine on CPU: mutual_knn (k = 10) and CKA over 10 models of 13 layers
   x 768 at N = 1000 (all 45 model pairs), prepared and summarised on each device.
3. The 78-model matrix from cached features on GPU: vision78's layer counts and widths (658 layers, from the
   backends' meta-device forward passes), random features, N = 1000, mutual_knn: preparation, summaries, pair
   stage.
4. Any N: exact mutual_knn (k = 10) at N = 1,000,000 on the GPU, two models of 2 layers x 256 made on the device,
   through `score_layers` (blocked exact search, no N x N): seconds and peak GPU memory.
"""

from __future__ import annotations

import time

import torch
from bench_zoo import timed_matrix, vision78_widths


def synced() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def extraction(batch: int = 32, batches: int = 8) -> None:
    import timm

    from prh_bench.manifest import ModelManifest
    from prh_bench.plugins.backends.timm_backend import TimmExtractor

    model = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=224).cuda().eval().half()
    m = ModelManifest(
        kind="model",
        id="dinov2-g14-random",
        version=1,
        backend="timm",
        source="vit_giant_patch14_dinov2",
        modality="vision",
        weights={"random": 0},
        dtype="float16",
    )
    ext = TimmExtractor(m, model, torch.device("cuda"))
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        model(x), ext.forward(x)  # warm-up
        t0 = synced()
        for _ in range(batches):
            model(x)
        plain = synced() - t0
        t0 = synced()
        for _ in range(batches):
            ext.forward(x)
        ours = synced() - t0
    n = batch * batches
    print(
        f"extraction, ViT-g/14 fp16, {n} images: plain timm {n / plain:.0f} img/s, prh-bench {n / ours:.0f} img/s "
        f"(ratio {plain / ours:.2f})"
    )


def zoo(widths: list[list[int]], n: int, device: str, metric: str) -> dict[str, float]:
    """`bench_zoo.timed_matrix` of random features with these layer widths, on `device`, with a total."""
    latent = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    feats = {}
    for i, ws in enumerate(widths):
        g = torch.Generator().manual_seed(i + 1)
        feats[str(i)] = [
            torch.relu(latent @ torch.randn(64, w, generator=g) + torch.randn(n, w, generator=g)).to(device) for w in ws
        ]
    split = timed_matrix(feats, metric, synced if device == "cuda" else time.perf_counter)
    return split | {"total": sum(split.values())}


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs one")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    extraction()
    ten = [[768] * 13] * 10
    for metric in ("mutual_knn", "cka"):
        cpu, gpu = zoo(ten, 1000, "cpu", metric), zoo(ten, 1000, "cuda", metric)
        print(
            f"engine, 10 models x 13 x 768, N = 1000, {metric}: CPU {cpu['total']:.2f} s, GPU {gpu['total']:.2f} s "
            f"(speedup {cpu['total'] / gpu['total']:.1f}x)"
        )
    split = zoo(list(vision78_widths().values()), 1000, "cuda", "mutual_knn")
    print("78-model matrix on GPU, mutual_knn, N = 1000: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
    million()


def million(n: int = 1_000_000) -> None:
    from prh_bench.align import prepare, score_layers

    g = torch.Generator(device="cuda").manual_seed(0)
    latent = torch.randn(n, 32, device="cuda", generator=g)
    x, y = (
        [
            torch.relu(
                latent @ torch.randn(32, 256, device="cuda", generator=g)
                + torch.randn(n, 256, device="cuda", generator=g)
            )
            for _ in range(2)
        ]
        for _ in range(2)
    )
    x, y = prepare(x), prepare(y)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = synced()
    best = score_layers("mutual_knn", x, y, k=10).best
    seconds = synced() - t0
    print(
        f"exact mutual_knn at N = {n:,}, 2 models x 2 x 256, on the GPU: {seconds:.1f} s, peak GPU memory "
        f"{(torch.cuda.max_memory_allocated() - base) / 2**30:.2f} GiB above the features, score {best:.4f}"
    )


if __name__ == "__main__":
    main()
