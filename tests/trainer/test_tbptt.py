"""Truncated BPTT: per-rank token streams, chunking, and a state that is carried and detached."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from trainer.models import LanguageModel, LanguageModelConfig
from trainer.tbptt import TruncatedBPTT, chunks, num_chunks, rank_rows


def test_ranks_read_disjoint_rows_of_equal_length() -> None:
    stream = list(range(103))
    rows = [rank_rows(stream, batch_size=2, rank=r, world_size=3) for r in range(3)]
    assert all(r.shape == (2, 17) for r in rows)  # 103 // 6 = 17; the tail is dropped
    flat = torch.cat(rows).flatten().tolist()
    assert flat == list(range(102)) and len(set(flat)) == 102  # contiguous, disjoint, in order
    assert torch.equal(rows[1], rank_rows(stream, batch_size=2, rank=1, world_size=3))


def test_too_short_a_stream_names_the_flags() -> None:
    with pytest.raises(ValueError, match="--batch-size 8 x 2 workers"):
        rank_rows(list(range(20)), batch_size=8, rank=0, world_size=2)


def test_chunks_cover_the_rows_with_shifted_targets() -> None:
    rows = torch.arange(22).view(2, 11)
    pieces = list(chunks(rows, 4))
    assert len(pieces) == num_chunks(rows, 4) == 3
    assert [inputs.size(1) for inputs, _ in pieces] == [4, 4, 2]
    for inputs, targets in pieces:
        assert torch.equal(targets, inputs + 1)


def lm() -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(
        LanguageModelConfig(vocab_size=20, embed_dim=8, hidden_size=12, cell="lstm")
    )
    torch.nn.init.normal_(model.embed.weight)  # large inputs: the carried state matters more
    return model


def test_state_is_carried_across_chunks() -> None:
    """The second chunk's predictions equal those of one pass over both chunks."""
    model, rows = lm(), torch.randint(4, 20, (3, 13))
    tbptt = TruncatedBPTT()
    losses = [tbptt.loss(model, model, x, y)[0] for x, y in chunks(rows, 6)]
    full, _ = model(rows[:, :-1], model.init_hidden(3))  # (B, 12, V)
    second = F.cross_entropy(full[:, 6:].flatten(0, 1), rows[:, 7:].flatten())
    assert losses[1].item() == pytest.approx(second.item(), rel=1e-5)
    fresh = TruncatedBPTT().loss(model, model, rows[:, 6:12], rows[:, 7:13])[0]
    assert abs(fresh.item() - second.item()) > 1e-4  # 50x the tolerance above: a reset differs


def test_gradient_stops_at_the_chunk_boundary() -> None:
    """The second chunk's gradient equals one computed from an explicitly detached state."""
    model, rows = lm(), torch.randint(4, 20, (3, 13))
    tbptt = TruncatedBPTT()
    pieces = list(chunks(rows, 6))
    tbptt.loss(model, model, *pieces[0])
    model.zero_grad()
    tbptt.loss(model, model, *pieces[1])[0].backward()
    truncated = [p.grad.clone() for p in model.parameters()]

    with torch.no_grad():
        _, state = model(pieces[0][0], model.init_hidden(3))
    model.zero_grad()
    logits, _ = model(pieces[1][0], state)
    F.cross_entropy(logits.flatten(0, 1), pieces[1][1].flatten()).backward()
    detached = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    full, _ = model(rows[:, :-1], model.init_hidden(3))
    F.cross_entropy(full[:, 6:].flatten(0, 1), rows[:, 7:].flatten()).backward()
    through = [p.grad.clone() for p in model.parameters()]

    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(truncated, detached, strict=True))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(truncated, through, strict=True))


def test_tbptt_training_runs_in_the_loop(tmp_path: object) -> None:
    from trainer.config import TrainConfig
    from trainer.loop import train_loop
    from trainer.tasks import get_task

    cfg = TrainConfig(
        task="autocomplete", bptt=20, batch_size=8, epochs=1, hidden_size=16, embed_dim=8,
        max_train_examples=600, diagnose_every=0, log_every=1000,
    )  # fmt: skip
    task = get_task("autocomplete")
    data = task.prepare(cfg)
    result = train_loop(task, data, cfg)
    stream_length = sum(len(example) for example in data.train)
    assert result.metrics["steps"] == -(-(stream_length // 8 - 1) // 20)


def test_bos_is_read_but_not_scored() -> None:
    """`[EOS] [BOS]` boundaries: `[BOS]` targets carry no loss and are not counted."""
    from trainer.data.tokenizer import BOS_ID, EOS_ID

    model = lm()
    rows = torch.tensor([[BOS_ID, 5, 6, EOS_ID, BOS_ID, 7, 8, EOS_ID, BOS_ID, 9]])
    loss, count = TruncatedBPTT().loss(model, model, rows[:, :-1], rows[:, 1:])
    assert count == 7  # 9 targets, 2 of them [BOS]
    logits, _ = model(rows[:, :-1], model.init_hidden(1))
    keep = rows[0, 1:] != BOS_ID
    expected = F.cross_entropy(logits[0][keep], rows[0, 1:][keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_stream_evaluation_carries_the_state_across_chunks() -> None:
    """`stream_loss` over chunks of 5 equals one pass over each whole row, and differs from
    evaluating each chunk from a zero state."""
    from trainer.tbptt import stream_loss

    model = lm().eval()
    stream = torch.randint(4, 20, (61,))
    total, count, _ = stream_loss(model, stream, bptt=5, rows=3)
    rows = rank_rows(stream, batch_size=3, rank=0, world_size=1)  # (3, 20)
    with torch.no_grad():
        logits, _ = model(rows[:, :-1], model.init_hidden(3))
    expected = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum")
    assert count == 3 * 19
    assert total == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():  # each chunk from a zero state: what a missing carry would score
        reset = sum(
            F.cross_entropy(
                model(x, model.init_hidden(3))[0].flatten(0, 1), y.flatten(), reduction="sum"
            ).item()
            for x, y in chunks(rows, 5)
        )
    assert total != pytest.approx(reset, rel=1e-4)
