"""The instability score (seed, "DN-DETR", Fig. 2): hand-made examples, and the matched-target
vectors of a model on fixed batches."""
from __future__ import annotations

import pytest
import torch

import tutorial
from tutorial.training.instability import instability, matched_targets

torch.set_num_threads(1)


def test_instability_counts_changed_predictions():
    prev = torch.tensor([[0, 1, -1, -1, 2]])
    cur = torch.tensor([[1, 0, -1, 2, 2]])  # two swapped, one newly matched, two unchanged
    assert instability(prev, cur) == 3
    assert instability(prev, prev) == 0
    assert instability([prev, torch.tensor([[-1, 0]])], [cur, torch.tensor([[0, -1]])]) == 5  # summed over batches
    assert instability(torch.tensor([[0, -1]]), torch.tensor([[-1, -1]])) == 1  # lost a match
    with pytest.raises(ValueError, match="shapes differ"):
        instability(prev, cur[:, :3])
    with pytest.raises(ValueError, match="batches"):
        instability([prev], [cur, cur])


def batches():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 80)
    mask = torch.zeros(2, 64, 80, dtype=torch.bool)
    mask[1, 48:] = True
    targets = [{"labels": torch.tensor([1, 3, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.4, 0.2],
                                                                         [0.5, 0.5, 0.3, 0.3]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    return [(images, mask, targets), (images[:1], mask[:1], targets[:1])]


@pytest.mark.parametrize("name", ["dab_detr_tiny", "dn_detr_tiny", "detr_tiny"])
def test_matched_targets_of_a_model(name):
    torch.manual_seed(0)
    model = tutorial.build_model(name, num_queries=5, transformer={"d_model": 32, "num_encoder_layers": 1,
                                                                  "num_decoder_layers": 2, "dim_feedforward": 64})
    model.train()
    data = batches()
    vs = matched_targets(model, data)
    assert model.training  # the mode is restored
    assert [tuple(v.shape) for v in vs] == [(2, 5), (1, 5)]
    first = vs[0]
    assert sorted(first[0][first[0] >= 0].tolist()) == [0, 1, 2]  # every object matched exactly once
    assert (first[1] == -1).all()  # the image without objects matches nothing
    assert torch.equal(vs[1][0], first[0])  # the same image gives the same matching
    assert instability(vs, matched_targets(model, data)) == 0  # same weights: nothing changes
    with torch.no_grad():  # a different model state: the matching may change, IS counts it
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert 0 < instability(vs, matched_targets(model, data)) <= 2 * 5 + 5
