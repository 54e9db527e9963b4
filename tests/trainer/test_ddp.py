"""Data parallelism without Ray: two processes on gloo (127.0.0.1), DistributedDataParallel.

- Two ranks, each on half a batch, end with the same averaged gradients as one process on the
  whole batch: what makes data-parallel BPTT equal to plain BPTT.
- A two-rank run stopped mid-epoch and resumed from rank 0's checkpoint equals the run that never
  stopped: the per-rank state (generators, the recurrent state TBPTT carries) is gathered and
  given back to each rank.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from trainer.checkpoint import load, save
from trainer.config import TrainConfig
from trainer.models import LanguageModel, LanguageModelConfig
from trainer.tasks import get_task

WORLD = 2


@pytest.fixture(autouse=True)
def _quiet_threads() -> Any:
    """The parent's own single-process reference: one thread, no contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)  # fmt: skip


def finish() -> None:
    """Leave the process group once every rank is done with it, then exit without the
    interpreter's teardown. DDP's reducer still holds the gloo group after
    `destroy_process_group`, and freeing it while the interpreter shuts down now and then
    aborted a rank after its last line of Python: "terminate called without an active
    exception", SIGABRT (2 runs in 8 here on 2026-12-05; with the barrier alone, once more in
    a full CI run; pytorch/pytorch#179291 describes the cause). `os._exit(0)` skips that
    teardown; whatever the rank wrote is already closed."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def language_model() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(LanguageModelConfig(vocab_size=30, embed_dim=8, hidden_size=12,
                                             num_layers=2, cell="lstm"))  # fmt: skip


def batch() -> dict[str, torch.Tensor]:
    """Eight sequences of 13 tokens, no padding: each half has as many targets as the other."""
    tokens = torch.randint(4, 30, (8, 13), generator=torch.Generator().manual_seed(1))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def gradients_worker(rank: int, port: int, out: str) -> None:
    init(rank, port)
    model = DistributedDataParallel(language_model())
    half = {k: v.chunk(WORLD)[rank] for k, v in batch().items()}
    loss, _ = get_task("autocomplete").loss(model, half)  # the loop's own loss
    loss.backward()  # DDP all-reduces and averages the gradients here
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
    finish()


def test_two_ranks_on_half_batches_average_to_the_whole_batch_gradient(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(gradients_worker, args=(free_port(), str(out)), nprocs=WORLD)
    model = language_model()
    loss, _ = get_task("autocomplete").loss(model, batch())
    loss.backward()
    ddp = torch.load(out)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
        assert torch.allclose(ddp[name], p.grad, rtol=0, atol=1e-6), name


class Crash(Exception):
    pass


def resume_worker(rank: int, port: int, workdir: str) -> None:
    """Whole run; the same run crashing after step 5 (every rank); a resume of it."""
    from trainer.loop import train_loop

    init(rank, port)
    cfg = TrainConfig(task="autocomplete", data="files", train=f"{workdir}/q.txt", epochs=2,
                      bptt=8, batch_size=4, hidden_size=12, embed_dim=8, num_layers=2,
                      dropout=0.2, checkpoint_every_steps=5, eval_completions=0,
                      diagnose_every=0, log_every=10_000)  # fmt: skip
    task = get_task("autocomplete")
    data = task.prepare(cfg, tokenizer_json=Path(f"{workdir}/tokenizer.json").read_text())
    common: dict[str, Any] = dict(wrap_model=DistributedDataParallel, rank=rank, world_size=WORLD)
    whole = train_loop(task, data, cfg, report=lambda m, c: None, **common)
    saved: list[Any] = []

    def crash(metrics: dict[str, float], checkpoint: Any) -> None:
        saved.append(checkpoint)
        if metrics["steps"] == 5:
            raise Crash  # on every rank: they all report at the same steps

    with contextlib.suppress(Crash):
        train_loop(task, data, cfg, report=crash, **common)
    if rank == 0:
        save(saved[-1], Path(f"{workdir}/resume.pt"))
    dist.barrier()
    resume = load(Path(f"{workdir}/resume.pt"))
    parts = train_loop(task, data, cfg, report=lambda m, c: None, resume=resume, **common)
    if rank == 0:
        torch.save({"whole": (whole.checkpoint, whole.model.state_dict()),
                    "parts": (parts.checkpoint, parts.model.state_dict()),
                    "resume": resume}, f"{workdir}/out.pt")  # fmt: skip
    finish()


def test_two_ranks_resumed_mid_epoch_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    words = ["weather", "paris", "cheap", "flights", "news", "today", "recipes", "pasta"]
    lines = [f"{words[i % 8]} {words[(3 * i + 1) % 8]} {i % 13}" for i in range(160)]
    (tmp_path / "q.txt").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(task="autocomplete", data="files", train=str(tmp_path / "q.txt"))
    (tmp_path / "tokenizer.json").write_text(
        get_task("autocomplete").prepare(cfg).tokenizer.to_str()
    )
    mp.spawn(resume_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD)
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    (whole, whole_state), (parts, parts_state) = out["whole"], out["parts"]
    resume = out["resume"]
    assert (resume.position.epoch, resume.position.batch) == (0, 5)
    assert len(resume.training.ranks) == WORLD
    carried = [r.tbptt for r in resume.training.ranks]
    assert not torch.equal(carried[0][0], carried[1][0])  # each rank carries its own rows' state
    assert parts.history == whole.history
    assert all(torch.equal(whole_state[k], parts_state[k]) for k in whole_state)
