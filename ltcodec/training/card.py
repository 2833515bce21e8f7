"""What a model card states about where a model was trained and measured."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def weights_line(state: dict) -> str:
    """The card's line on which weights of a checkpoint were exported (``state["exported_weights"]``)."""
    if state.get("exported_weights") == "ema":
        return f"* Weights: the moving average (decay {state.get('ema_decay', 0.999)} per step) of the training weights."
    return "* Weights: the training weights at that step."


def history_line(change: dict) -> str:
    """The card's line on one change of the recipe during training (a checkpoint's ``history``)."""
    if "lambdas_from" in change:
        return (f"* Quality ladder changed at step {change['step']:,} from λ = "
                f"{', '.join(map(str, change['lambdas_from']))} (gains refitted per channel in log2 λ, `--lambdas`).")
    if "lr_from" in change:
        return f"* Learning rate changed at step {change['step']:,} from {change['lr_from']:g} to {change['lr']:g} (`--lr`)."
    raise ValueError(f"unknown training change {change}")
