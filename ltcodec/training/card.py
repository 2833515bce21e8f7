"""What a model card states about where a model was trained and measured."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path
from typing import Callable, Sequence

from .widen import COPY_NOISE


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


def learning_rate_line(state: dict) -> list[str]:
    """The card's line on the base learning rate the run had reached (``state["lr"]``), if it kept it.  The
    history records changes of it, and the rate a start from other weights ramps up to only since starts
    kept it, so this line is what says the rate of a run started before then."""
    return [f"* Base learning rate at the last step: {state['lr']:g}."] if "lr" in state else []


#: The key that marks each kind of recipe change in a ``history`` (and in the log that records it).
CHANGE_KEYS = ("lambdas_from", "lr_from", "scale_floor_level_from", "channels_from", "transform_N_from",
               "analysis_blocks_from", "latent_from", "crop_from",
               "init_from", "rate_from", "mel_weight_from", "target_kbps_from",
               "likelihood_floor_from", "quality_weighting_from", "context_from", "context_fit_steps",
               "entropy_fit_steps", "ranks_from", "adversarial_from")


def is_change(record: dict) -> bool:
    """Whether a log record is a change of the recipe, i.e. an entry of the checkpoint's ``history``."""
    return any(k in record for k in CHANGE_KEYS)


class RecipeChanges:
    """The recipe changes of a run: its checkpoint's ``history`` (which the card reports) plus the
    changes a resumed run makes now, which are also printed and written to the training log."""

    def __init__(self, history: Sequence[dict] = ()):
        self.history = list(history)
        self.new: list[dict] = []

    def add(self, change: dict | None, what: str) -> None:
        if change is None:
            return
        self.history.append(change)
        self.new.append(change)
        print(f"{what} changed: {json.dumps(change)}", flush=True)

    def write_new(self, log) -> None:
        """Write the changes made since the last call to the training log."""
        for change in self.new:
            log.write(json.dumps(change) + "\n")
        self.new = []


def resumed_setting(state: dict | None, key: str, default, requested, step: int) -> tuple:
    """A setting a run keeps in its checkpoint under ``key`` (``default`` before checkpoints kept it, and
    for a fresh run) unless ``requested`` differs, and the recipe change that records a switch
    (``{key}_from`` → ``key``), if any."""
    return changed_setting(state.get(key, default) if state is not None else default, key, requested, step)


def processes_setting(kept: dict | None, world: int, step: int) -> tuple:
    """:func:`resumed_setting` for the processes sharing each batch (``--ranks``): one for a run whose
    checkpoint or history did not keep it (every run before ``--ranks`` existed), none recorded for a
    fresh run (``kept`` None)."""
    return resumed_setting(kept, "ranks", 1 if kept is not None else world, world, step)


def recorded_settings(history: Sequence[dict]) -> dict:
    """The settings a run's recipe changes left in force (the last value each ``{key}_from`` change set):
    what a run initialized from its weights goes on with, where no checkpoint keeps them."""
    settings: dict = {}
    for change in history:
        settings.update({k[: -len("_from")]: change[k[: -len("_from")]] for k in change
                         if k.endswith("_from") and k[: -len("_from")] in change})
    return settings


def changed_setting(value, key: str, requested, step: int) -> tuple:
    """``requested`` in place of a run's current ``value`` of setting ``key`` (kept when not requested),
    and the recipe change that records a switch (``{key}_from`` → ``key``), if any."""
    if requested is None or requested == value:
        return value, None
    return requested, {"step": step, f"{key}_from": value, key: requested}


def history_line(change: dict) -> str:
    """The card's line on one change of the recipe during training (a checkpoint's ``history``)."""
    if "lambdas_from" in change:
        return (f"* Quality ladder changed at step {change['step']:,} from λ = "
                f"{', '.join(map(str, change['lambdas_from']))} (gains refitted per channel in log2 λ, `--lambdas`).")
    if "lr_from" in change:
        return f"* Learning rate changed at step {change['step']:,} from {change['lr_from']:g} to {change['lr']:g} (`--lr`)."
    if "scale_floor_level_from" in change:
        return (f"* Entropy-model scale floor changed at step {change['step']:,} from level "
                f"{change['scale_floor_level_from']} to {change['scale_floor_level']} (`--scale-floor-level`).")
    if "channels_from" in change:
        return (f"* Transforms widened at step {change['step']:,} from {change['channels_from']} to "
                f"{change['channels']} first-layer channels, computing the same function (`--channels`).")
    if "transform_N_from" in change:
        return (f"* Transforms g_a and g_s widened at step {change['step']:,} from {change['transform_N_from']} to "
                f"{change['transform_N']} channels, computing the same function but for noise of "
                f"{COPY_NOISE:g} on the copies (`--transform-N` with `--init`).")
    if "analysis_blocks_from" in change:
        return (f"* Analysis transform deepened at step {change['step']:,} from {change['analysis_blocks_from']} to "
                f"{change['analysis_blocks']} residual blocks after each of its second and third GDN, the new "
                "ones starting as the identity (`--analysis-blocks` with `--init`).")
    if "latent_from" in change:
        return (f"* Latent widened at step {change['step']:,} from {change['latent_from']} to {change['latent']} "
                "channels, the new ones starting small in g_a and unseen by g_s (`--M` with `--init`).")
    if "context_from" in change:
        return (f"* Entropy model changed at step {change['step']:,} from the {change['context_from']} context to the "
                f"{change['context']} one, its network starting at zero so that it computed the same (`--context` "
                "with `--init`).")
    if "entropy_fit_steps" in change:
        parts = {"h_a": "hyper-analysis", "h_s": "hyper-synthesis", "z_density": "hyper-latent density",
                 "ctx": "context"}
        names = ", ".join(parts.get(p, p) for p in change.get("parts", ()))
        return (f"* Entropy model ({names}) fitted alone at step {change['step']:,}: {change['entropy_fit_steps']:,} "
                f"steps on {change.get('crop', 256)}² crops in batches of {change.get('batch', 8)} for the bits "
                f"alone, the transforms and gains (their moving average) frozen, Adam from {change.get('lr', 1e-4):g} "
                f"(a context {change.get('ctx_factor', 10.0):g} times that) decaying to 0; then held fixed while "
                "the rest trains (`--fit-entropy`, `--refit-every`).")
    if "context_fit_steps" in change:
        return (f"* Context network fitted alone at step {change['step']:,}: {change['context_fit_steps']:,} steps "
                f"on {change.get('crop', 256)}² crops, the other weights (their moving average) frozen, Adam from "
                f"{change.get('lr', 1e-3):g} decaying to 0; then held fixed while the rest trains (`--fit-context`, "
                "since folded into `--fit-entropy`).")
    if "crop_from" in change:
        return (f"* Training crops changed at step {change['step']:,} from {change['crop_from']}² in batches of "
                f"{change.get('batch_from', 8)} to {change['crop']}² in batches of {change.get('batch', 8)} "
                "(`--crop`, `--batch`).")
    if "init_from" in change:
        return (f"* Training went on at step {change['step']:,} from the weights of `{change['init_from']}` "
                f"(its moving average) with a fresh optimizer, the learning rate ramped up over "
                f"{change.get('warmup', 0):,} steps" + (f" to {change['lr']:g}" if "lr" in change else "")
                + " (`--init`, `--warmup`).")
    if "mel_weight_from" in change:
        return (f"* Mel term of the distortion changed at step {change['step']:,} from weight "
                f"{change['mel_weight_from']:g} to {change['mel_weight']:g} (`--mel-weight`).")
    if "likelihood_floor_from" in change:
        return (f"* Likelihood floor of the rate changed at step {change['step']:,} from "
                f"{change['likelihood_floor_from']:g} to {change['likelihood_floor']:g} (`--likelihood-floor`).")
    if "target_kbps_from" in change:
        return (f"* Rate targets changed at step {change['step']:,} from "
                f"{', '.join(f'{k:g}' for k in change['target_kbps_from'])} kbps to "
                f"{', '.join(f'{k:g}' for k in change['target_kbps'])} kbps (`--target-kbps`).")
    if "rate_from" in change:
        return (f"* Rate term changed at step {change['step']:,} from the {change['rate_from']} to the "
                f"{change['rate']} likelihood of the latent (`--rate`).")
    if "ranks_from" in change:
        return (f"* Processes sharing each batch changed at step {change['step']:,} from {change['ranks_from']} to "
                f"{change['ranks']}: the same batches and averaged gradients, each process drawing its own rate "
                "noise (`--ranks`).")
    if "adversarial_from" in change:
        return (f"* Adversarial term changed at step {change['step']:,} from weight {change['adversarial_from']:g} to "
                f"{change['adversarial']:g}: hinge loss and feature matching of a small multi-scale STFT "
                "discriminator trained alongside (`--adversarial`).")
    if "quality_weighting_from" in change:
        return (f"* Loss over the qualities changed at step {change['step']:,} from the "
                f"{change['quality_weighting_from']} to the {change['quality_weighting']} of their losses "
                "(`--quality-weighting`).")
    raise ValueError(f"unknown training change {change}")


def eval_records(log: Path | None, until_step: int) -> list[dict]:
    """The periodic evals a training log holds up to a step (the last one per step, if a run repeated it)."""
    if log is None or not log.exists():
        return []
    by_step = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec and rec["step"] <= until_step:
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def progress_section(records: list[dict], qualities: Sequence[int], cell: Callable[[dict], str],
                     what: str, key: str | None = None) -> list[str]:
    """Card lines: a periodic eval over the steps, for some qualities (one cell per quality).

    ``key`` names the eval to show; by default the moving average's where the run kept one, else the
    training weights'.  ``what`` says what the eval measures, on which signals.
    """
    shown = [r for r in records if key is None or key in r]
    if not shown:
        return []
    lines = [f"{what} (ideal box-code rates, close to but not equal to file sizes; each quality's λ or rate "
             "target is the one in force at that step):", "",
             "| step | weights | " + " | ".join(f"q{q}" for q in qualities) + " |",
             "|---|---|" + "---|" * len(qualities)]
    for rec in shown:
        name = key if key is not None else ("eval_ema" if "eval_ema" in rec else "eval")
        by_q = {r["quality"]: r for r in rec[name]}
        lines.append(f"| {rec['step']:,} | {'average' if name.endswith('_ema') else 'training'} | "
                     + " | ".join(cell(by_q[q]) if q in by_q else "–" for q in qualities) + " |")
    return lines + [""]


# Model files written before they kept their recipe history in their metadata: the card beside them
# still lists it, and its progress tables hold the periodic evals.  Read back, they let training go on
# from such a file with the card intact (the inverses of history_line and progress_section).

_NUMBER = r"(-?[\d.]+(?:e-?\d+)?)"
_CARD_CHANGES = (
    (r"\* Quality ladder changed at step ([\d,]+) from λ = ([^(]+?) \(", lambda m: {
        "lambdas_from": [float(v) for v in m[2].split(",")]}),
    (rf"\* Learning rate changed at step ([\d,]+) from {_NUMBER} to {_NUMBER} ", lambda m: {
        "lr_from": float(m[2]), "lr": float(m[3])}),
    (r"\* Entropy-model scale floor changed at step ([\d,]+) from level (-?\d+) to (-?\d+) ", lambda m: {
        "scale_floor_level_from": int(m[2]), "scale_floor_level": int(m[3])}),
    (r"\* Transforms widened at step ([\d,]+) from (\d+) to (\d+) ", lambda m: {
        "channels_from": int(m[2]), "channels": int(m[3])}),
    (r"\* Latent widened at step ([\d,]+) from (\d+) to (\d+) ", lambda m: {
        "latent_from": int(m[2]), "latent": int(m[3])}),
    (r"\* Training crops changed at step ([\d,]+) from (\d+)² in batches of (\d+) to (\d+)² in batches of (\d+) ",
     lambda m: {"crop_from": int(m[2]), "batch_from": int(m[3]), "crop": int(m[4]), "batch": int(m[5])}),
    (rf"\* Mel term of the distortion changed at step ([\d,]+) from weight {_NUMBER} to {_NUMBER} ", lambda m: {
        "mel_weight_from": float(m[2]), "mel_weight": float(m[3])}),
    (rf"\* Likelihood floor of the rate changed at step ([\d,]+) from {_NUMBER} to {_NUMBER} ", lambda m: {
        "likelihood_floor_from": float(m[2]), "likelihood_floor": float(m[3])}),
    (r"\* Rate targets changed at step ([\d,]+) from ([^k]+) kbps to ([^k]+) kbps ", lambda m: {
        "target_kbps_from": [float(v) for v in m[2].split(",")],
        "target_kbps": [float(v) for v in m[3].split(",")]}),
    (r"\* Processes sharing each batch changed at step ([\d,]+) from (\d+) to (\d+):", lambda m: {
        "ranks_from": int(m[2]), "ranks": int(m[3])}),
    (rf"\* Adversarial term changed at step ([\d,]+) from weight {_NUMBER} to {_NUMBER}:", lambda m: {
        "adversarial_from": float(m[2]), "adversarial": float(m[3])}),
    (r"\* Rate term changed at step ([\d,]+) from the (\w+) to the (\w+) ", lambda m: {
        "rate_from": m[2], "rate": m[3]}),
    (rf"\* Training went on at step ([\d,]+) from the weights of `([^`]+)` .* over ([\d,]+) steps(?: to {_NUMBER})?",
     lambda m: {"init_from": m[2], "warmup": int(m[3].replace(",", "")), **({"lr": float(m[4])} if m[4] else {})}),
)


def recorded_history(meta: dict, card: Path, ladder: Sequence[float] = ()) -> list[dict]:
    """A model file's recipe history: its metadata's, else its card's (``card``, beside it), else none."""
    if "history" in meta:
        return json.loads(meta["history"])
    return history_from_card(card.read_text(), ladder) if card.exists() else []


def history_from_card(text: str, lambdas: Sequence[float]) -> list[dict]:
    """The recipe changes a card lists; ``lambdas`` is the model's ladder, the last ladder change's new one."""
    history = []
    for line in text.splitlines():
        for pattern, fields in _CARD_CHANGES:
            m = re.match(pattern, line)
            if m:
                history.append({"step": int(m[1].replace(",", "")), **fields(m)})
                break
    ladders = [h for h in history if "lambdas_from" in h]
    for change, following in zip(ladders, ladders[1:] + [None]):
        change["lambdas"] = list(following["lambdas_from"] if following else lambdas)
    return history


def evals_from_card(text: str) -> list[dict]:
    """The periodic evals of a card's progress tables, as training-log records (image or audio cells)."""
    if "## Training progress" not in text:
        return []
    records: dict[int, dict] = {}
    tables, qualities = 0, []
    for line in text.split("## Training progress", 1)[1].splitlines():
        if line.startswith("| step |"):
            tables += 1
            qualities = [int(c.strip()[1:]) for c in line.split("|")[3:-1]]
            continue
        m = re.match(r"\| ([\d,]+) \| (average|training) \| (.+) \|$", line)
        if not m:
            continue
        rows = []
        for q, cell in zip(qualities, m[3].split("|")):
            c = re.match(rf"\s*{_NUMBER} (bpp|kbps), {_NUMBER} dB", cell)
            if c:
                rate, score = ("bpp", "psnr") if c[2] == "bpp" else ("kbps", "si_sdr")
                rows.append({"quality": q, rate: float(c[1]), score: float(c[3])})
        step = int(m[1].replace(",", ""))
        key = ("eval" if tables == 1 else "eval_train") + ("_ema" if m[2] == "average" else "")
        records.setdefault(step, {"step": step})[key] = rows
    for rec in records.values():
        rec.setdefault("eval", rec.get("eval_ema", []))
    return [records[s] for s in sorted(records)]


def seed_from_card(card: Path, log: Path) -> None:
    """Start a training log with the evals of the card of the model file a run starts from."""
    if card.exists() and not (log.exists() and log.stat().st_size):
        with open(log, "w") as f:
            for rec in evals_from_card(card.read_text()):
                f.write(json.dumps(rec) + "\n")
