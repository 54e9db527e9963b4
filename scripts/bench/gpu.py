"""Scenario 9, the GPU (`make bench GPU=1` on a machine with CUDA).

Training: the autocomplete language model (GRU, so `nn.GRU` runs on cuDNN) at the benchmark's
size and at a wider one, batch 128, the same batches for every variant: fp32 with cuDNN, fp32
without cuDNN (`torch.backends.cudnn.enabled = False`), and mixed precision with cuDNN
(`torch.autocast` float16 with a `GradScaler`, and bfloat16 where supported). tokens/s = targets
of the timed steps / their seconds (CUDA synchronized), after warm-up steps.

Serving: the served `lm_step` graph through ONNX Runtime's CUDA execution provider vs the CPU
one, batch 1 to 256, inputs and outputs in host memory as the server has them.

Without a CUDA device the scenario records "skipped: no CUDA device" (with `--gpu` that is a
failure: the run was asked for a GPU).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from scripts.bench.ceiling import feeds, graph_spec, session
from scripts.bench.common import Context, Result, timed_for
from scripts.bench.models import bench_models, bundle_for

BATCHES = (1, 8, 64, 256)
TRAIN_BATCH = 128
HIDDEN_SIZES = (256, 1024)
TITLE = "GPU: training with cuDNN and mixed precision vs fp32; ONNX Runtime CUDA vs CPU"


def batches(count: int, device: Any) -> list[dict[str, Any]]:
    """`count` training batches of the autocomplete corpus, on `device`."""
    from torch.utils.data import DataLoader

    from trainer.config import resolve
    from trainer.tasks import get_task

    cfg = resolve({"task": "autocomplete", "max_train_examples": TRAIN_BATCH * count}, environ={})
    task = get_task("autocomplete")
    data = task.prepare(cfg)
    loader = DataLoader(data.train, batch_size=TRAIN_BATCH, collate_fn=task.collate)
    return [{k: v.to(device) for k, v in b.items()} for b in loader][:count]


@contextlib.contextmanager
def cudnn(enabled: bool) -> Iterator[None]:
    import torch

    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before


def train_steps(hidden: int, data: list[dict[str, Any]], *, device: Any, precision: str,
                warmup: int = 5) -> dict[str, float]:  # fmt: skip
    """Train on `data` (after `warmup` untimed steps); targets/s and seconds per step."""
    import torch

    from trainer.config import resolve
    from trainer.tasks import get_task

    task = get_task("autocomplete")
    cfg = resolve({"task": "autocomplete", "embed_dim": 64, "hidden_size": hidden}, environ={})
    torch.manual_seed(0)
    vocab = int(max(int(b["targets"].max()) for b in data)) + 1
    model = task.build_model(cfg, max(vocab, 64)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(batch: dict[str, Any]) -> int:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, targets = task.loss(model, batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return targets

    for batch in data[:warmup]:
        step(batch)
    _sync(device)
    start = time.perf_counter()
    targets = sum(step(batch) for batch in data[warmup:])
    _sync(device)
    seconds = time.perf_counter() - start
    return {"tokens_per_second": targets / seconds, "step_ms": seconds / (len(data) - warmup) * 1e3}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def training_rows(ctx: Context, device: Any) -> list[dict[str, Any]]:
    import torch

    data = batches(20 if ctx.quick else 60, device)
    variants: list[tuple[str, bool, str]] = [
        ("fp32, cuDNN", True, "fp32"), ("fp32, no cuDNN", False, "fp32"),
        ("fp16 autocast, cuDNN", True, "fp16"),
    ]  # fmt: skip
    if torch.cuda.is_bf16_supported():
        variants.append(("bf16 autocast, cuDNN", True, "bf16"))
    rows = []
    for hidden in HIDDEN_SIZES:
        for name, use_cudnn, precision in variants:
            with cudnn(use_cudnn):
                measured = train_steps(hidden, data, device=device, precision=precision)
            rows.append({"part": "training", "hidden_size": hidden, "variant": name, **measured})
            print(f"  train hidden {hidden:<5} {name:<22} {measured['tokens_per_second']:>10,.0f} "
                  f"tokens/s", flush=True)  # fmt: skip
    return rows


def serving_rows(ctx: Context) -> tuple[list[dict[str, Any]], str | None]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [], "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    path, spec, vocab = graph_spec(bundle_for(bench_models(ctx), "autocomplete"), "lm_step")
    cpu = session(path, 1)
    gpu = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    seconds = 0.3 if ctx.quick else 1.0
    rows = []
    for batch in BATCHES:
        inputs = feeds(spec, batch, vocab)
        row: dict[str, Any] = {"part": "serving", "graph": "lm_step", "batch": batch}
        for name, sess in (("cpu", cpu), ("cuda", gpu)):

            def call(s: Any = sess, x: dict[str, Any] = inputs) -> object:
                return s.run(None, x)

            timed_for(call, 0.1)
            times = timed_for(call, seconds)
            step = sorted(times)[len(times) // 2]
            row[f"{name}_tokens_per_second"] = batch / step
            row[f"{name}_step_ms"] = step * 1e3
        row["cuda_over_cpu"] = row["cuda_tokens_per_second"] / row["cpu_tokens_per_second"]
        rows.append(row)
        print(f"  serve lm_step batch {batch:>4}: cpu {row['cpu_tokens_per_second']:>10,.0f} "
              f"cuda {row['cuda_tokens_per_second']:>10,.0f} tokens/s", flush=True)  # fmt: skip
    return rows, None


def run(ctx: Context) -> Result:
    import torch

    if not torch.cuda.is_available():
        if ctx.gpu:
            raise RuntimeError("--gpu: no CUDA device is available to this process")
        return Result("gpu", TITLE, status="skipped", reason="no CUDA device")
    device = torch.device("cuda")
    rows = training_rows(ctx, device)
    served, missing = serving_rows(ctx)
    notes = [missing] if missing else []
    for hidden in HIDDEN_SIZES:
        base = next(r for r in rows if r["hidden_size"] == hidden and r["variant"] == "fp32, cuDNN")
        for row in (r for r in rows if r["hidden_size"] == hidden):
            row["over_fp32_cudnn"] = row["tokens_per_second"] / base["tokens_per_second"]
    return Result(
        scenario="gpu",
        title=TITLE,
        settings={
            "train_batch": TRAIN_BATCH,
            "hidden_sizes": list(HIDDEN_SIZES),
            "serving_batches": list(BATCHES),
            "device": torch.cuda.get_device_name(0),
        },
        rows=rows + served,
        notes=notes,
    )


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    train = [r for r in data["rows"] if r["part"] == "training"]
    serve = [r for r in data["rows"] if r["part"] == "serving"]
    lines = table(
        train,
        [("hidden_size", "hidden"), ("variant", "variant"), ("tokens_per_second", "tokens/s"),
         ("step_ms", "step ms"), ("over_fp32_cudnn", "vs fp32 cuDNN")],
    )  # fmt: skip
    if serve:
        lines += ["", *table(
            serve,
            [("batch", "batch"), ("cpu_tokens_per_second", "ORT CPU tok/s"),
             ("cuda_tokens_per_second", "ORT CUDA tok/s"), ("cuda_over_cpu", "CUDA / CPU")],
        )]  # fmt: skip
    return lines


def plot(data: dict[str, Any], plt: Any) -> Any:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    train = [r for r in data["rows"] if r["part"] == "training"]
    labels = [f"{r['variant']}\nhidden {r['hidden_size']}" for r in train]
    left.barh(labels, [r["tokens_per_second"] for r in train])
    left.set(xlabel="training tokens/s", title="Training on the GPU")
    left.invert_yaxis()
    serve = [r for r in data["rows"] if r["part"] == "serving"]
    if serve:
        xs = [r["batch"] for r in serve]
        right.plot(xs, [r["cpu_tokens_per_second"] for r in serve], marker="o", label="ORT CPU")
        right.plot(xs, [r["cuda_tokens_per_second"] for r in serve], marker="o", label="ORT CUDA")
        right.set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s",
                  title="lm_step: CUDA vs CPU execution provider")  # fmt: skip
        right.legend()
    return figure
