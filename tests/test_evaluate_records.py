"""Per-organ Dice in ``evaluate_pairs``: an organ the fixed slice does not show is not scored.

CHAOS slices often show the liver but not a kidney or the spleen. ``dice()`` scores a label absent
from both maps as 1.0 (the maps agree), which is right for one pair but made every per-organ mean
an average of real overlaps and free 100 %s. The records now hold None there, and the summary
averages over the pairs that show the organ, with their count.
"""
import numpy as np
import pytest

from regnp.evaluate import evaluate_pairs, summarize_records


class _Pairs:
    """Two 16×16 pairs: both show organ 1; only the first shows organ 4 (moving = fixed shifted
    by one column, so Dice is below 1 where an organ is shown)."""
    eval_labels = (1,)
    report_labels = (1, 4)

    def __init__(self):
        f = np.zeros((2, 1, 16, 16), np.int64)
        f[:, 0, 2:10, 2:10] = 1
        f[0, 0, 11:15, 11:15] = 4
        self.fixed_mask = f
        self.moving_mask = np.roll(f, 1, axis=3)

    def __len__(self):
        return 2

    def batch(self, idx):
        i = list(idx)
        img = self.fixed_mask[i].astype(np.float32)
        return {"fixed": img, "moving": self.moving_mask[i].astype(np.float32),
                "fixed_mask": self.fixed_mask[i], "moving_mask": self.moving_mask[i],
                "ids": [f"pair{k}" for k in i]}


class _Identity:
    """A 'model' that predicts no displacement."""

    def forward(self, F, M):
        return M, np.zeros((F.shape[0], 2) + F.shape[2:], F.dtype), {}


def test_an_organ_missing_from_the_fixed_slice_is_not_scored():
    recs = evaluate_pairs(_Identity(), _Pairs())
    # organ 1: 8×8 square vs the same square one column over: 2·56 / 128
    assert recs[0]["dice_after_per_label"]["1"] == pytest.approx(112 / 128)
    assert recs[0]["dice_after_per_label"]["4"] == pytest.approx(2 * 12 / 32)
    assert recs[1]["dice_after_per_label"]["4"] is None          # was 1.0
    s = summarize_records(recs)
    assert s["per_label"]["4"]["n_pairs"] == 1 and s["per_label"]["1"]["n_pairs"] == 2
    assert s["per_label"]["4"]["after"]["mean"] == pytest.approx(100 * 24 / 32)   # not (75+100)/2
    assert s["dice_after"]["mean"] == pytest.approx(100 * 112 / 128)             # pair Dice: organ 1
