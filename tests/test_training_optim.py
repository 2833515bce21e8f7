"""The training optimizer: gains in their own, faster group; older one-group states still resume; the
log weighting of qualities."""

import pytest
import torch
from torch import nn

from ltcodec.training.optim import QualityLosses, WeightAverage, gain_optimizer, set_learning_rate, split_state


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Linear(3, 3)
        self.enc_gain = nn.Parameter(torch.zeros(2, 3))
        self.dec_gain = nn.Parameter(torch.zeros(2, 3))


def _step(opt, model):
    loss = (model.conv(torch.ones(1, 3)) * model.enc_gain.exp().sum() * model.dec_gain.exp().sum()).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_gains_get_the_faster_learning_rate():
    m = Tiny()
    opt = gain_optimizer(m, [m.enc_gain, m.dec_gain], 1e-3, 10.0)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    assert opt.param_groups[1]["params"][0] is m.enc_gain
    set_learning_rate(opt, 1e-4, 10.0)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]


def test_a_one_group_state_resumes_with_its_moments_on_the_right_parameters():
    m = Tiny()
    old = torch.optim.Adam(m.parameters(), lr=1e-3)
    _step(old, m)
    saved = old.state_dict()
    opt = gain_optimizer(m, [m.enc_gain, m.dec_gain], 1e-3, 10.0)
    opt.load_state_dict(split_state(saved, m, [m.enc_gain, m.dec_gain]))
    # the moments follow each parameter, whatever group it now sits in
    assert torch.equal(opt.state[m.enc_gain]["exp_avg"], old.state[m.enc_gain]["exp_avg"])
    assert torch.equal(opt.state[m.conv.weight]["exp_avg"], old.state[m.conv.weight]["exp_avg"])
    _step(opt, m)  # and it keeps training


def test_weight_average_follows_the_weights_at_its_decay_and_resumes():
    model = Tiny()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
    avg = WeightAverage(model, decay=0.75)
    with torch.no_grad():
        model.conv.weight.fill_(5.0)  # an optimizer step changes the weights in place
    avg.update()
    assert torch.allclose(avg.state["conv.weight"], torch.full((3, 3), 2.0))  # 0.75·1 + 0.25·5
    assert torch.equal(model.conv.weight, torch.full((3, 3), 5.0))  # the weights themselves untouched
    again = WeightAverage(model, decay=0.75, saved=avg.state)  # from a checkpoint
    again.update()
    assert torch.allclose(again.state["conv.weight"], torch.full((3, 3), 2.75))


def test_log_weighting_gives_each_quality_the_gradient_of_its_relative_loss():
    losses = QualityLosses(3)
    quality = torch.tensor([0.0, 2.0, 2.0])
    per_sample = torch.tensor([0.1, 4.0, 4.0], requires_grad=True)
    losses.observe(per_sample.detach(), quality)
    losses.weight(per_sample, quality).backward()
    # Running means 0.1 and 4.0 (quality 1 unseen): d/dL_i = mean(0.1, 4.0) / (3·mean of i's quality).
    expected = torch.tensor([2.05 / 0.3, 2.05 / 12.0, 2.05 / 12.0])
    assert torch.allclose(per_sample.grad, expected.float())
    # The plain sum would give the top quality 40× the bottom one's pull; here a sample's pull is the
    # reciprocal of its quality's loss, so a 10% gain counts alike at either end of the ladder.
    assert per_sample.grad[0] * 0.1 == pytest.approx(per_sample.grad[1] * 4.0)
    losses.observe(torch.tensor([0.2, 4.0, 4.0]), quality)
    assert losses.state()[0] == pytest.approx(0.99 * 0.1 + 0.01 * 0.2)
    resumed = QualityLosses(3, losses.state())
    assert torch.allclose(resumed.means, losses.means, equal_nan=True)  # the unseen quality stays unknown

