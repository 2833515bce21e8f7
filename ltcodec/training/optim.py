"""The optimizer shared by the training recipes: per-quality gains learn faster than the transforms.

The gain vectors are a few hundred numbers that set each quality's operating point; at the
transforms' learning rate they barely leave their initial ladder in tens of thousands of steps
(measured: image log2-gains moved < 0.15 in 22 k steps at 2·10⁻⁴), so every channel stays active
at every quality.  Their own parameter group at ``factor`` × the learning rate lets them settle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = ["QUALITY_WEIGHTINGS", "QualityLosses", "gain_optimizer", "split_state", "set_learning_rate", "WeightAverage",
           "learning_rate_change", "descend", "drop_mismatched_state"]


def _split(model: nn.Module, gains: list[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in model.parameters() if all(p is not g for g in gains)]


def gain_optimizer(model: nn.Module, gains: list[nn.Parameter], lr: float, factor: float) -> torch.optim.Adam:
    """Adam with two groups: (everything else, lr) and (gains, lr × factor)."""
    return torch.optim.Adam([{"params": _split(model, gains), "lr": lr}, {"params": gains, "lr": lr * factor}])


def split_state(saved: dict, model: nn.Module, gains: list[nn.Parameter]) -> dict:
    """An optimizer state saved with one parameter group, split into (others, gains) as built now."""
    if len(saved["param_groups"]) == 2:
        return saved
    ids = {id(p): i for i, p in enumerate(model.parameters())}
    gain_ids = [ids[id(g)] for g in gains]
    group = saved["param_groups"][0]
    rest = [i for i in group["params"] if i not in gain_ids]
    return {"state": saved["state"], "param_groups": [dict(group, params=rest), dict(group, params=gain_ids)]}


def drop_mismatched_state(opt: torch.optim.Optimizer) -> int:
    """Forget the optimizer state of parameters whose shape changed since it was saved (a widened layer's
    moments belong to the narrower tensor); returns how many were dropped."""
    stale = [p for p, st in opt.state.items() if any(torch.is_tensor(v) and v.dim() and v.shape != p.shape
                                                     for v in st.values())]
    for p in stale:
        del opt.state[p]
    return len(stale)


def warmup_factor(step: int, warmup: tuple[int, int]) -> float:
    """The learning-rate factor at ``step`` of a ramp over ``warmup`` = (first step, length); 1 without one.

    Adam's first steps after a fresh start move every weight by about the full learning rate, whatever its
    gradient's noise: a trained model started from its weights (``--init``) ramps up instead."""
    start, length = warmup
    return min(1.0, (step - start + 1) / length) if length else 1.0


def set_learning_rate(opt: torch.optim.Optimizer, lr: float, factor: float) -> None:
    opt.param_groups[0]["lr"] = lr
    opt.param_groups[1]["lr"] = lr * factor


class WeightAverage:
    """An exponential moving average of a model's floating-point state, kept beside its weights.

    At batch 8 the weights wander from one checkpoint to the next (image: up to ~1 dB at the highest
    quality); their average does not, and costs one vector operation per step.  The recipes save
    ``state`` in their checkpoints and evaluate and export it.
    """

    @staticmethod
    def add_argument(parser) -> None:
        """The recipes' ``--ema-decay`` option."""
        parser.add_argument("--ema-decay", type=float, default=0.999,
                            help="decay of the moving average of the weights kept beside them (exported by default)")

    def __init__(self, model: nn.Module, decay: float, saved: dict | None = None):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if saved:
            self.state.update(saved)
        live = model.state_dict()
        pairs = [(self.state[k], live[k]) for k in self.state if live[k].dtype.is_floating_point]
        self._avg, self._live = [a for a, _ in pairs], [v for _, v in pairs]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._avg, self._live, 1.0 - self.decay)


def learning_rate_change(state: dict | None, lr: float, step: int, log_path: Path | None = None,
                         default: float | None = None) -> dict | None:
    """The change of base learning rate a resumed run makes, as a ``history`` entry (the card reports it).

    The rate trained with so far is the checkpoint's; checkpoints from before it was kept fall back on
    the last rate the log recorded, then on ``default`` (the only rate the recipe had used).
    """
    if state is None:
        return None
    before = trained_learning_rate(state, log_path, default)
    if before is None or before == lr:
        return None
    return {"step": step, "lr_from": before, "lr": lr}


def trained_learning_rate(state: dict, log_path: Path | None = None, default: float | None = None) -> float | None:
    """The base learning rate a checkpoint's run has been training with (see :func:`learning_rate_change`)."""
    before = state.get("lr")
    if before is None and log_path is not None and log_path.exists():
        logged = [r["lr"] for r in map(json.loads, log_path.read_text().splitlines()) if "lr" in r]
        before = logged[-1] if logged else None
    return default if before is None else before


def resolve_learning_rate(lr: float | None, state: dict | None, log_path: Path | None, default: float) -> float:
    """``--lr`` as given, else the rate a resumed run has been training with, else the recipe's default:
    resuming without ``--lr`` must not quietly move a run to another rate."""
    if lr is not None:
        return lr
    if state is None:
        return default
    return trained_learning_rate(state, log_path, default)


def descend(opt: torch.optim.Optimizer, model: nn.Module, average: WeightAverage, loss: torch.Tensor,
            step: int, reduce: Callable[[], None] | None = None) -> bool:
    """One optimizer step on ``loss`` (gradients clipped to norm 1), then the moving average.

    ``reduce`` runs between the backward pass and the clipping (data parallelism averages the gradients
    of its processes there).  A non-finite loss changes nothing and returns False: one bad batch must not
    wreck hours of training.
    """
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        print(f"step {step}: non-finite loss, batch skipped", flush=True)
        return False
    loss.backward()
    if reduce is not None:
        reduce()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    average.update()
    return True


#: How the qualities of a batch add up to the loss that is descended (``--quality-weighting``).
QUALITY_WEIGHTINGS = ("sum", "log")


class QualityLosses:
    """A running mean of each quality's loss, to weight the qualities of a batch for ``log`` weighting.

    With the plain sum, a quality counts by the size of its loss, and those sizes differ widely along a
    ladder: the image loss λ·255²·MSE + bpp is ~150× larger at the top than at the bottom, the audio
    loss is largest at the bottom, where the rate weight is steepest.  The shared transforms then serve
    the loudest qualities.  Rate–distortion comparisons (BD-rate, quality at a bitrate) count every
    quality by its *relative* cost, so ``log`` descends Σ_q log L_q instead: each sample's loss divided
    by its quality's running mean (held constant), times the mean over qualities so that the gradient
    keeps its usual size under the clip at norm 1.  A quality's own trade-off of distortion against
    rate is unchanged (both are scaled alike).
    """

    def __init__(self, qualities: int, state: list[float] | None = None, decay: float = 0.99):
        self.means = torch.tensor(state if state is not None else [float("nan")] * qualities, dtype=torch.float64)
        self.decay = decay

    @torch.no_grad()
    def observe(self, per_sample: torch.Tensor, quality: torch.Tensor) -> None:
        """Move the running means by a batch's losses (the whole batch's, where processes share one);
        :meth:`weight` then divides by them."""
        q = quality.long()
        for k in q.unique().tolist():
            value = float(per_sample[q == k].mean())
            old = float(self.means[k])
            self.means[k] = value if math.isnan(old) else self.decay * old + (1 - self.decay) * value

    def weight(self, per_sample: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """The loss to descend: each sample's loss over its quality's running mean (see the class)."""
        q = quality.long()
        scale = self.means[q].to(per_sample.dtype)
        known = self.means[~torch.isnan(self.means)]
        return (per_sample / scale).mean() * float(known.mean())

    def state(self) -> list[float]:
        return self.means.tolist()
