"""Progress lines: every N steps, and at least every `interval` seconds when steps are slow."""

from __future__ import annotations

import time

import pytest

from trainer.progress import Progress


def test_lines_every_n_steps_with_rate_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(total_steps=10, every=5, prefix="[t] ", interval=3600)
    for _ in range(10):
        progress.step(loss=2.0, targets=100)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["[t] step 5/10", "[t] step 10/10"]
    assert all("loss 2.0000" in line and "targets/s" in line and "eta" in line for line in lines)


def test_slow_steps_still_print_within_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(total_steps=1000, every=1000, interval=0.05)
    for _ in range(3):
        time.sleep(0.06)
        progress.step(loss=1.0, targets=1)
    assert len(capsys.readouterr().out.splitlines()) == 3
