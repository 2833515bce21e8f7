"""The image training recipe's helpers: widening the latent, restarting from a model file, the ablation runs."""

from pathlib import Path

import pytest
import torch

from ltcodec.image_model import ImageModelConfig, LatticeHyperprior
from ltcodec.training.image import latent_positions, widen_latent


def test_widened_latent_starts_as_the_same_codec():
    torch.manual_seed(0)
    narrow = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    wide = LatticeHyperprior(ImageModelConfig(N=16, M=24, lattice="e8"))
    wide.load_state_dict(widen_latent(narrow.state_dict(), 24))
    x = torch.rand(1, 3, 64, 64)
    q = torch.tensor([3.0])
    a, b = narrow.estimate(x, q), wide.estimate(x, q)
    # The old channels keep their blocks, means and scales; the new ones do not reach g_s.
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert torch.equal(a["bits_z"], b["bits_z"])
    assert b["bits_y"] >= a["bits_y"]
    assert wide.g_a[6].weight[16:].abs().sum() > 0  # the new channels can learn


def test_widen_refuses_to_narrow():
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    try:
        widen_latent(net.state_dict(), 8)
    except ValueError as e:
        assert "narrow" in str(e)
    else:
        raise AssertionError("narrowing was accepted")


def test_a_shipped_file_restarts_training_with_its_hyperprior(tmp_path):
    import numpy as np

    from ltcodec.image_codec import ImageCodecModel, export_image_model
    from ltcodec.training.image import load_init

    torch.manual_seed(1)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "m.safetensors"
    history = [{"step": 3, "scale_floor_level_from": -32, "scale_floor_level": -20}]
    export_image_model(net, [rgb], path, "m", extra_meta={"train_step": 9, "history": history})
    ImageCodecModel.from_file(path)  # the codec ignores the training-only arrays
    init = load_init(path)
    assert init.config.lambdas == net.config.lambdas and init.step == 9 and init.history == tuple(history)
    assert init.config.scale_floor_level == ImageCodecModel.from_file(path).config.scale_floor_level
    assert init.config.likelihood_floor == net.config.likelihood_floor
    weights = init.weights
    again = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    missing, unexpected = again.load_state_dict(weights, strict=False)
    assert not missing and not unexpected
    for k, v in net.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=2e-3, atol=2e-3)  # fp16 conv kernels


def test_every_ablation_lattice_builds_the_image_model():
    from bench.ablation import LATENT_CHANNELS, train_command
    from ltcodec.lattice import get_lattice

    for lattice, m in LATENT_CHANNELS.items():
        assert m % get_lattice(lattice).dim == 0 and m >= 128
        LatticeHyperprior(ImageModelConfig(N=8, M=m, lattice=lattice))
        cmd = train_command(lattice, Path("init.ckpt"), 10, Path("out"), 0)
        assert cmd[cmd.index("--M") + 1] == str(m) and cmd[cmd.index("--lattice") + 1] == lattice


def test_refitted_gains_keep_a_ladder_and_follow_its_slope():
    from ltcodec.training.image import refit_gains

    old = [0.002, 0.004, 0.008, 0.016]
    slope = torch.tensor([0.5, 0.3])
    gains = torch.log2(torch.tensor(old))[:, None] * slope + torch.tensor([1.0, -2.0])
    torch.testing.assert_close(refit_gains(gains, old, old), gains)
    new = [0.0005, 0.003, 0.016, 0.064]  # below, inside, on and above the old ladder
    want = torch.log2(torch.tensor(new))[:, None] * slope + torch.tensor([1.0, -2.0])
    torch.testing.assert_close(refit_gains(gains, old, new), want)
    try:
        refit_gains(gains, old, [0.01, 0.001, 0.02, 0.03])
    except ValueError as e:
        assert "increasing" in str(e)
    else:
        raise AssertionError("a decreasing ladder was accepted")


def _tiny_run(tmp_path, out):
    """Arguments of a training run small enough for a unit test (two 64² images, an 8-channel model)."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(2):
            Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
    return ["--data", str(data), "--eval", str(tmp_path / "none"), "--out", str(out), "--N", "8", "--M", "8",
            "--batch", "2", "--crop", "64", "--threads", "1", "--eval-every", "0", "--keep-every", "0"]


def _fork(tmp_path, base, out, steps, *extra):
    """Run a tiny training started from ``base``'s checkpoint (one warm-up step); return its checkpoint."""
    from ltcodec.training.image import main

    main(_tiny_run(tmp_path, out) + ["--steps", str(steps), "--init", str(base / "last.ckpt"), "--warmup", "1",
                                     *extra])
    return torch.load(out / "last.ckpt", weights_only=False)


def test_resuming_with_a_new_ladder_refits_the_gains(tmp_path):
    import json

    from ltcodec.training.image import main, refit_gains

    out = tmp_path / "run"
    common = _tiny_run(tmp_path, out)
    main(common + ["--steps", "2"])
    before = torch.load(out / "last.ckpt", weights_only=False)
    old = before["config"]["lambdas"]
    new = [lam / 4 for lam in old[:-1]] + [old[-1]]
    main(common + ["--steps", "2", "--resume", "--lambdas", *map(str, new)])  # no step: only the refit
    after = torch.load(out / "last.ckpt", weights_only=False)
    assert after["config"]["lambdas"] == new and after["step"] == 2
    torch.testing.assert_close(after["model"]["enc_gain"], refit_gains(before["model"]["enc_gain"], old, new))
    assert (after["model"]["enc_gain"][0] < before["model"]["enc_gain"][0]).all()  # a lower λ, a coarser step
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    change = {"step": 2, "lambdas_from": old, "lambdas": new}
    assert change in log and after["history"] == [change]
    main(common + ["--steps", "3", "--resume"])  # the new ladder is the model's from now on
    later = torch.load(out / "last.ckpt", weights_only=False)
    assert later["config"]["lambdas"] == new and later["history"] == [change]
    del later["history"]  # a checkpoint from before the history was kept: rebuilt from the log
    torch.save(later, out / "last.ckpt")
    main(common + ["--steps", "3", "--resume"])
    assert torch.load(out / "last.ckpt", weights_only=False)["history"] == [change]
    try:
        main(common + ["--steps", "3", "--resume", "--lambdas", "0.1", "0.2"])
    except SystemExit as e:
        assert "8 values" in str(e)
    else:
        raise AssertionError("a ladder of the wrong length was accepted")


def test_a_checkpoint_run_goes_on_in_a_wider_latent_with_its_record(tmp_path):
    from ltcodec.training.image import load_init, main

    out = tmp_path / "run"
    main(_tiny_run(tmp_path, out) + ["--steps", "3", "--lr", "2e-4"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    init = load_init(out / "last.ckpt")  # the moving average, the step and the CPU time it took
    assert init.step == 3 and init.cpu_seconds == state["cpu_seconds"] > 0
    assert all(torch.equal(init.weights[k], v) for k, v in state["ema"].items())
    wide = tmp_path / "wide"
    after = _fork(tmp_path, out, wide, 4, "--M", "16", "--lr", "1e-4")
    assert after["step"] == 4 and after["config"]["M"] == 16 and after["model"]["g_a.6.weight"].shape[0] == 16
    assert after["cpu_seconds"] > state["cpu_seconds"]
    assert after["history"] == [{"step": 3, "init_from": "last.ckpt", "warmup": 1, "lr": 1e-4},
                                {"step": 3, "latent_from": 8, "latent": 16}]


def test_a_run_started_from_another_keeps_its_training_settings(tmp_path):
    from ltcodec.training.image import main

    out = tmp_path / "run"
    main(_tiny_run(tmp_path, out) + ["--steps", "1", "--lambdas", *[f"{0.001 * 2 ** k:g}" for k in range(8)],
                                      "--scale-floor-level", "-20", "--likelihood-floor", "1.5e-5"])
    main(_tiny_run(tmp_path, out) + ["--steps", "2", "--resume", "--rate", "hard", "--quality-weighting", "log"])
    before = torch.load(out / "last.ckpt", weights_only=False)
    on = tmp_path / "on"
    _fork(tmp_path, out, on, 3)
    again = tmp_path / "again"  # asking for the settings in force records no change of them
    _fork(tmp_path, out, again, 3, "--rate", "hard", "--quality-weighting", "log")
    for run in (on, again):
        after = torch.load(run / "last.ckpt", weights_only=False)
        assert after["config"]["lambdas"] == [float(f"{0.001 * 2 ** k:g}") for k in range(8)]
        assert (after["config"]["scale_floor_level"], after["config"]["likelihood_floor"]) == (-20, 1.5e-5)
        assert after["config"] == before["config"]
        assert (after["rate"], after["quality_weighting"]) == ("hard", "log")
        assert after["history"] == before["history"] + [{"step": 2, "init_from": "last.ckpt", "warmup": 1, "lr": 2e-4}]


def test_checkpoints_keep_a_moving_average_of_the_weights(tmp_path):
    from ltcodec.training.export_image import load_trained
    from ltcodec.training.image import main

    runs = {}
    for decay in ("0", "1"):
        out = tmp_path / decay
        main(_tiny_run(tmp_path, out) + ["--steps", "2", "--ema-decay", decay])
        runs[decay] = torch.load(out / "last.ckpt", weights_only=False)
        raw, _ = load_trained(out / "last.ckpt")
        avg, _ = load_trained(out / "last.ckpt", ema=True)
        changed = [k for k, v in raw.state_dict().items() if not torch.equal(v, avg.state_dict()[k])]
        assert (changed == []) == (decay == "0")  # decay 0 follows the weights; 1 stays at the start
    assert set(runs["1"]["ema"]) == set(runs["1"]["model"]) and runs["1"]["ema_decay"] == 1.0


def test_a_new_learning_rate_is_recorded_for_the_card(tmp_path):
    from ltcodec.training.card import history_line
    from ltcodec.training.image import main

    out = tmp_path / "run"
    common = _tiny_run(tmp_path, out)
    main(common + ["--steps", "2", "--lr", "2e-4"])
    main(common + ["--steps", "3", "--resume", "--lr", "1e-4"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["lr"] == 1e-4 and state["history"] == [{"step": 2, "lr_from": 2e-4, "lr": 1e-4}]
    assert history_line(state["history"][0]) == "* Learning rate changed at step 2 from 0.0002 to 0.0001 (`--lr`)."
    main(common + ["--steps", "4", "--resume", "--lr", "1e-4"])  # the same rate again: nothing new
    assert torch.load(out / "last.ckpt", weights_only=False)["history"] == state["history"]
    main(common + ["--steps", "5", "--resume"])  # no --lr: the run's own rate, not the default 2e-4
    kept = torch.load(out / "last.ckpt", weights_only=False)
    assert kept["step"] == 5 and kept["lr"] == 1e-4 and kept["history"] == state["history"]
    with pytest.raises(SystemExit, match="give both"):
        main(common + ["--steps", "6", "--resume", "--lr-drop-at", "5"])


def test_periodic_eval_measures_training_images_beside_the_eval_images(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from ltcodec.training.image import main

    out = tmp_path / "run"
    common = _tiny_run(tmp_path, out)
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(kodak / "a.png")
    common[common.index("--eval") + 1] = str(kodak)
    common[common.index("--eval-every") + 1] = "1"
    main(common + ["--steps", "1"])
    (rec,) = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval" in r]
    for key in ("eval", "eval_ema", "eval_train_ema"):
        assert [r["quality"] for r in rec[key]] == list(range(1, 9))
    # The flat grey eval image costs far fewer bits than the random training images.
    assert rec["eval_ema"][7]["bpp"] < rec["eval_train_ema"][7]["bpp"]


def test_training_can_floor_the_scales_as_the_codec_does(tmp_path):
    from ltcodec.training.card import history_line
    from ltcodec.training.image import main

    out = tmp_path / "run"
    common = _tiny_run(tmp_path, out)
    main(common + ["--steps", "1"])
    main(common + ["--steps", "2", "--resume", "--scale-floor-level", "-20"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["config"]["scale_floor_level"] == -20
    change = {"step": 1, "scale_floor_level_from": -32, "scale_floor_level": -20}
    assert state["history"] == [change] and "level -32 to -20" in history_line(change)
    main(common + ["--steps", "3", "--resume"])  # kept without the option
    assert torch.load(out / "last.ckpt", weights_only=False)["config"]["scale_floor_level"] == -20


def test_training_can_price_outliers_as_the_coder_does(tmp_path):
    from ltcodec.training.image import main

    out = tmp_path / "run"
    common = _tiny_run(tmp_path, out)
    main(common + ["--steps", "1"])
    main(common + ["--steps", "2", "--resume", "--likelihood-floor", "1.5e-5"])
    main(common + ["--steps", "3", "--resume"])  # kept without the option
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["config"]["likelihood_floor"] == 1.5e-5
    assert state["history"] == [{"step": 1, "likelihood_floor_from": 1e-9, "likelihood_floor": 1.5e-5}]


def test_the_likelihood_floor_caps_what_an_outlier_costs():
    from ltcodec.image_model import ImageModelConfig, LatticeHyperprior

    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    net = LatticeHyperprior(ImageModelConfig(N=8, M=8))
    net.eval()
    with torch.no_grad():
        net.enc_gain.add_(6.0)  # latents far out in their predicted scales: many coordinates at the floor
        default = net.estimate(x, torch.tensor([0.0]))["bits_y"]
        net.config.likelihood_floor = 2.0 ** -16
        capped = net.estimate(x, torch.tensor([0.0]))["bits_y"]
    assert capped < default
    assert capped <= 16.0 * 8 * 4 * 4 + 1e-3  # M · (64/16)² coordinates at 16 bits at most


def test_the_float_entropy_model_honours_the_scale_floor():
    from ltcodec.image_model import ImageModelConfig, LatticeHyperprior

    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=8, M=8))
    z = torch.randn(1, 8, 2, 2) * 50
    free = net.hyper_parameters(z)[1]
    assert free.min() < 0 < free.max()
    net.config.scale_floor_level = 0  # σ' ≥ 1: log2 σ' ≥ 0
    floored = net.hyper_parameters(z)[1]
    torch.testing.assert_close(floored, free.clamp_min(0.0))


def test_new_crops_are_recorded_for_the_card(tmp_path):
    from ltcodec.training.card import history_line
    from ltcodec.training.image import main

    out = tmp_path / "run"
    common = _tiny_run(tmp_path, out)  # 64² crops in batches of 2
    main(common + ["--steps", "2"])
    main(common + ["--steps", "3", "--resume", "--batch", "1"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    change = {"step": 2, "crop_from": 64, "batch_from": 2, "crop": 64, "batch": 1}
    assert state["history"] == [change] and (state["crop"], state["batch"]) == (64, 1)
    assert history_line(change) == ("* Training crops changed at step 2 from 64² in batches of 2 to 64² in "
                                    "batches of 1 (`--crop`, `--batch`).")
    main(common + ["--steps", "4", "--resume", "--batch", "1"])  # unchanged: nothing new
    assert torch.load(out / "last.ckpt", weights_only=False)["history"] == [change]


def test_the_hard_rate_is_the_coded_rate_and_trains_the_entropy_model():
    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    x = torch.rand(2, 3, 64, 64)
    q = torch.tensor([0.0, 5.0])
    coded = net.estimate(x, q)["bits_y"]
    hard = net(x, q, rate="hard")
    # Same bits as the coder's ideal (one image at a time there), and a gradient for the hyper-synthesis.
    torch.testing.assert_close(hard["bits_y"].detach(), coded)
    hard["bits_y"].sum().backward()
    assert net.h_s[4].weight.grad.abs().sum() > 0 and net.g_a[0].weight.grad.abs().sum() > 0
    noisy = net(x, q)["bits_y"].detach()  # the dithered estimate differs
    assert not torch.allclose(noisy, coded, rtol=0.01)
    with pytest.raises(ValueError, match="soft"):
        net(x, q, rate="soft")


@pytest.mark.parametrize("key,old,new,line", [
    ("rate", "noise", "hard", "* Rate term changed at step 1 from the noise to the hard likelihood of the latent "
                              "(`--rate`)."),
    ("quality_weighting", "sum", "log", "* Loss over the qualities changed at step 1 from the sum to the log of their "
                                        "losses (`--quality-weighting`)."),
])
def test_a_run_switches_a_setting_once_and_keeps_it(tmp_path, key, old, new, line):
    from ltcodec.training.card import history_line
    from ltcodec.training.image import main

    out = tmp_path / "run"
    common = _tiny_run(tmp_path, out)
    option = "--" + key.replace("_", "-")
    main(common + ["--steps", "1"])
    assert torch.load(out / "last.ckpt", weights_only=False)[key] == old
    main(common + ["--steps", "3", "--resume", option, new])
    state = torch.load(out / "last.ckpt", weights_only=False)
    change = {"step": 1, f"{key}_from": old, key: new}
    assert state[key] == new and state["history"] == [change]
    assert history_line(change) == line
    main(common + ["--steps", "4", "--resume"])  # kept without the option, nothing new recorded
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state[key] == new and state["history"] == [change]
    if key == "quality_weighting":  # the running means travel with the checkpoint
        assert sum(v == v for v in state["quality_losses"]) >= 2


def test_a_run_takes_on_a_context_from_another_runs_weights_and_keeps_it(tmp_path):
    from ltcodec.training.card import history_line
    from ltcodec.training.image import main

    out = tmp_path / "run"
    main(_tiny_run(tmp_path, out) + ["--steps", "2"])
    with pytest.raises(SystemExit, match="--init"):
        main(_tiny_run(tmp_path, out) + ["--steps", "3", "--resume", "--context", "checkerboard"])
    on = tmp_path / "on"
    _fork(tmp_path, out, on, 3, "--context", "checkerboard")
    main(_tiny_run(tmp_path, on) + ["--steps", "4", "--resume"])  # kept without the option
    state = torch.load(on / "last.ckpt", weights_only=False)
    change = {"step": 2, "context_from": "none", "context": "checkerboard"}
    assert state["config"]["context"] == "checkerboard" and change in state["history"]
    assert "checkerboard" in history_line(change)
    assert any(k.startswith("ctx.") for k in state["model"]) and any(k.startswith("ctx.") for k in state["ema"])
    assert state["model"]["ctx.2.weight"].abs().sum() > 0  # it trained


def test_an_entropy_model_fitted_alone_is_held_fixed_and_shipped_as_fitted(tmp_path):
    from ltcodec.training.card import history_line
    from ltcodec.training.image import held_parts, main

    base, out = tmp_path / "base", tmp_path / "ctx"
    main(_tiny_run(tmp_path, base) + ["--steps", "2"])
    before = _fork(tmp_path, base, out, 3, "--context", "checkerboard")
    main(_tiny_run(tmp_path, out) + ["--steps", "5", "--resume", "--fit-entropy", "3", "--fit-crop", "64",
                                     "--fit-batch", "4", "--fit-lr", "0.01"])
    fitted = torch.load(out / "last.ckpt", weights_only=False)
    parts = ["h_a", "h_s", "z_density", "ctx"]
    change = {"step": 3, "entropy_fit_steps": 3, "parts": parts, "crop": 64, "batch": 4, "lr": 0.01,
              "ctx_factor": 10.0}
    assert change in fitted["history"] and fitted["fixed_parts"] == parts
    assert "3 steps on 64² crops in batches of 4" in history_line(change)
    assert "hyper-synthesis" in history_line(change)
    held = [k for k in fitted["model"] if k.startswith(tuple(f"{name}." for name in parts))]
    for k in ("ctx.2.weight", "h_s.4.weight"):  # they learned (h_s.0 sees ẑ, all zero in so small a model)
        assert not torch.equal(fitted["model"][k], before["model"][k])
    for k in held:  # the average ships what was fitted, and the two steps after it left it alone
        assert torch.equal(fitted["model"][k], fitted["ema"][k])
    assert not torch.equal(fitted["model"]["g_a.0.weight"], before["model"]["g_a.0.weight"])  # the rest trained
    main(_tiny_run(tmp_path, out) + ["--steps", "6", "--resume"])  # kept fixed without the option
    again = torch.load(out / "last.ckpt", weights_only=False)
    assert again["fixed_parts"] == parts and all(torch.equal(again["model"][k], fitted["model"][k]) for k in held)
    assert [h for h in again["history"] if "entropy_fit_steps" in h] == [change]
    follow = tmp_path / "follow"  # a run started from these weights goes on holding the fitted parts
    on = _fork(tmp_path, out, follow, 7)
    assert on["fixed_parts"] == parts and all(torch.equal(on["model"][k], again["ema"][k]) for k in held)
    # an earlier record fitted the context alone
    assert held_parts([{"step": 1, "context_fit_steps": 5}, change]) == ["ctx", "h_a", "h_s", "z_density"]


def test_a_run_refits_its_entropy_model_every_so_many_steps(tmp_path):
    import json

    from ltcodec.training.image import last_fit_step, main

    out = tmp_path / "run"
    main(_tiny_run(tmp_path, out) + ["--steps", "2", "--context", "checkerboard"])
    main(_tiny_run(tmp_path, out) + ["--steps", "3", "--resume", "--refit-every", "2"])  # nothing fixed yet
    assert last_fit_step(torch.load(out / "last.ckpt", weights_only=False)["history"]) == 0
    main(_tiny_run(tmp_path, out) + ["--steps", "4", "--resume", "--fit-entropy", "2", "--fit-crop", "64",
                                     "--fit-batch", "2"])
    first = torch.load(out / "last.ckpt", weights_only=False)
    main(_tiny_run(tmp_path, out) + ["--steps", "11", "--resume", "--refit-every", "3", "--refit-steps", "2",
                                     "--fit-crop", "64", "--fit-batch", "2", "--fit-lr", "0.01"])
    run = torch.load(out / "last.ckpt", weights_only=False)
    fits = [(c["step"], c["entropy_fit_steps"]) for c in run["history"] if "entropy_fit_steps" in c]
    assert fits == [(3, 2), (6, 2), (9, 2)] and last_fit_step(run["history"]) == 9
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "entropy_fit_steps" in r] == [3, 6, 9]  # each written once
    assert not torch.equal(run["model"]["h_s.4.weight"], first["model"]["h_s.4.weight"])  # refitted
    assert all(torch.equal(run["model"][k], run["ema"][k]) for k in run["model"] if k.startswith("h_s."))


def test_a_latent_with_a_context_widens_group_by_group_as_the_same_codec():
    torch.manual_seed(0)
    narrow = LatticeHyperprior(ImageModelConfig(N=16, M=64, lattice="e8", context="checkerboard"))
    with torch.no_grad():  # a context that computes something (a new one starts at zero)
        for p in narrow.ctx.parameters():
            p.normal_(0, 0.05)
    wide = LatticeHyperprior(ImageModelConfig(N=16, M=128, lattice="e8", context="checkerboard"))
    wide.load_state_dict(widen_latent(narrow.state_dict(), 128))
    pos = latent_positions(64, 128, 8)
    assert pos[:8].tolist() == list(range(8)) and pos[8].item() == 16  # each group keeps its own blocks
    x = torch.rand(1, 3, 128, 128)
    for q in (0.0, 4.0, 7.0):
        a, b = narrow.estimate(x, torch.tensor([q])), wide.estimate(x, torch.tensor([q]))
        assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-6)
        assert torch.equal(a["bits_z"], b["bits_z"])
        assert b["bits_y"] >= a["bits_y"] - 1e-3
        y_a = narrow.hard_latent(x, torch.tensor([q]))
        y_b = wide.hard_latent(x, torch.tensor([q]))
        old = wide.from_blocks(y_b["hard"])[:, pos]
        assert torch.equal(narrow.from_blocks(y_a["hard"]), old)  # the old channels code as they did
        assert torch.allclose(narrow.from_blocks(y_a["scale"]), wide.from_blocks(y_b["scale"])[:, pos])
    with pytest.raises(ValueError, match="whole lattice blocks"):
        widen_latent(narrow.state_dict(), 72)


def test_widening_the_latent_releases_a_fitted_entropy_model():
    from ltcodec.training.image import held_parts

    fit = {"step": 5, "entropy_fit_steps": 3, "parts": ["h_a", "h_s", "z_density", "ctx"]}
    assert held_parts([fit]) == fit["parts"]
    assert held_parts([fit, {"step": 7, "latent_from": 192, "latent": 320}]) == []
    assert held_parts([fit, {"step": 7, "latent_from": 192, "latent": 320}, dict(fit, step=9)]) == fit["parts"]


def test_a_run_widening_its_latent_trains_its_entropy_model_again(tmp_path):
    from ltcodec.training.image import main

    base, wide = tmp_path / "base", tmp_path / "wide"
    main(_tiny_run(tmp_path, base) + ["--steps", "2", "--M", "64", "--context", "checkerboard"])
    main(_tiny_run(tmp_path, base) + ["--steps", "3", "--M", "64", "--resume", "--fit-entropy", "1",
                                      "--fit-crop", "64", "--fit-batch", "2"])
    fitted = torch.load(base / "last.ckpt", weights_only=False)
    assert fitted["fixed_parts"] == ["h_a", "h_s", "z_density", "ctx"]
    run = _fork(tmp_path, base, wide, 5, "--M", "128")
    assert {"step": 3, "latent_from": 64, "latent": 128} in run["history"]
    assert run["fixed_parts"] == [] and run["model"]["h_s.4.weight"].shape[0] == 256
    old = torch.cat([latent_positions(64, 128, 8), latent_positions(64, 128, 8) + 128])
    assert not torch.equal(run["model"]["h_s.4.weight"][old], fitted["ema"]["h_s.4.weight"])  # it trains
    # --refit-every counts from the widening (step 3), not from the last fit (step 2): due at 6
    main(_tiny_run(tmp_path, wide) + ["--steps", "8", "--resume", "--refit-every", "3", "--refit-steps", "1",
                                      "--fit-crop", "64", "--fit-batch", "2"])
    refit = torch.load(wide / "last.ckpt", weights_only=False)
    assert [c["step"] for c in refit["history"] if "entropy_fit_steps" in c] == [2, 6]
    assert refit["fixed_parts"] == ["h_a", "h_s", "z_density", "ctx"]
    assert torch.equal(refit["model"]["h_s.4.weight"], refit["ema"]["h_s.4.weight"])  # held since the fit


def test_a_refit_falls_due_every_so_many_steps_after_a_fit_or_a_release():
    from ltcodec.training.image import entropy_fit_due

    fit = {"step": 100, "entropy_fit_steps": 600, "parts": ["h_s"]}
    widen = {"step": 150, "latent_from": 192, "latent": 320}
    assert not entropy_fit_due([], 10_000, 50)  # never fitted: never refitted
    assert not entropy_fit_due([fit], 10_000, 0)
    assert not entropy_fit_due([fit], 149, 50) and entropy_fit_due([fit], 150, 50)
    assert not entropy_fit_due([fit, widen], 150, 50) and entropy_fit_due([fit, widen], 200, 50)


def test_widened_transforms_start_as_the_same_codec():
    from ltcodec.training.image import widen_transforms

    torch.manual_seed(0)
    narrow = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    with torch.no_grad():  # GDNs whose channels interact (a new one's γ is the identity)
        for m in narrow.modules():
            if hasattr(m, "gamma"):
                m.gamma.add_(0.2 * torch.rand_like(m.gamma))
    wide = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8", transform_N=24))
    x = torch.rand(1, 3, 64, 64)
    for noise in (0.0, 0.001):
        wide.load_state_dict(widen_transforms(narrow.state_dict(), wide, noise=noise))
        assert wide.g_a[0].weight.shape[0] == wide.g_s[5].gamma.shape[0] == 24  # 8 channels copied twice
        assert wide.h_a[0].weight.shape[0] == 16  # the hyperprior keeps its width
        for q in (0.0, 7.0):
            a, b = narrow.estimate(x, torch.tensor([q])), wide.estimate(x, torch.tensor([q]))
            tol = 1e-5 if noise == 0 else 1e-2
            assert torch.allclose(a["x_hat"], b["x_hat"], atol=tol)
            assert torch.allclose(a["bits_y"] + a["bits_z"], b["bits_y"] + b["bits_z"], rtol=tol)
    assert not torch.equal(wide.g_a[0].weight[:8], wide.g_a[0].weight[16:])  # the copies can diverge


def test_a_run_widens_its_transforms_from_a_checkpoint(tmp_path):
    from ltcodec.training.card import history_line
    from ltcodec.training.image import main

    base, wide = tmp_path / "base", tmp_path / "wide"
    main(_tiny_run(tmp_path, base) + ["--steps", "2"])
    run = _fork(tmp_path, base, wide, 3, "--transform-N", "12", "--M", "16")  # the latent widens too
    change = {"step": 2, "transform_N_from": 8, "transform_N": 12}
    assert change in run["history"] and run["config"]["transform_N"] == 12
    assert {"step": 2, "latent_from": 8, "latent": 16} in run["history"]
    assert run["model"]["g_s.2.weight"].shape[:2] == (12, 12) and run["model"]["h_s.0.weight"].shape[0] == 8
    assert run["model"]["g_s.0.weight"].shape[:2] == (16, 12) and run["model"]["g_a.6.weight"].shape[:2] == (16, 12)
    assert "widened at step 2 from 8 to 12 channels" in history_line(change)
    main(_tiny_run(tmp_path, wide) + ["--steps", "4", "--resume"])  # resumes at its widths (--M 8 is ignored)
    assert torch.load(wide / "last.ckpt", weights_only=False)["step"] == 4
    with pytest.raises(SystemExit, match="can only widen"):
        main(_tiny_run(tmp_path, tmp_path / "narrow") + ["--init", str(wide / "last.ckpt"), "--M", "16",
                                                         "--transform-N", "10"])


def test_a_deeper_analysis_transform_starts_as_the_same_codec():
    torch.manual_seed(0)
    shallow = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    deep = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8", analysis_blocks=2))
    missing, unexpected = deep.load_state_dict(shallow.state_dict(), strict=False)
    assert not unexpected and sorted({k.split(".")[1] for k in missing}) == ["10", "7", "8", "9"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(shallow.g_a(x), deep.g_a(x))  # the new blocks are the identity
        for block in list(deep.g_a)[7:]:
            block.conv2.weight.normal_(0, 0.1)
        assert not torch.allclose(shallow.g_a(x), deep.g_a(x), atol=1e-3)  # ... and take part once trained
    assert deep.g_s.state_dict().keys() == shallow.g_s.state_dict().keys()  # the decoder is untouched


def test_a_run_deepens_its_analysis_transform_from_a_checkpoint(tmp_path):
    from ltcodec.training.card import history_line
    from ltcodec.training.image import main

    base, deep = tmp_path / "base", tmp_path / "deep"
    main(_tiny_run(tmp_path, base) + ["--steps", "2"])
    run = _fork(tmp_path, base, deep, 3, "--analysis-blocks", "1")
    change = {"step": 2, "analysis_blocks_from": 0, "analysis_blocks": 1}
    assert change in run["history"] and run["config"]["analysis_blocks"] == 1
    assert run["model"]["g_a.8.conv1.weight"].shape[:2] == (8, 8)
    assert not torch.equal(run["model"]["g_a.7.conv2.weight"], torch.zeros_like(run["model"]["g_a.7.conv2.weight"]))
    assert "deepened at step 2 from 0 to 1 residual blocks" in history_line(change)
    main(_tiny_run(tmp_path, deep) + ["--steps", "4", "--resume"])
    assert torch.load(deep / "last.ckpt", weights_only=False)["step"] == 4
    with pytest.raises(SystemExit, match="can only deepen"):
        main(_tiny_run(tmp_path, tmp_path / "shallow") + ["--init", str(deep / "last.ckpt"), "--analysis-blocks", "0"])


def test_two_processes_train_as_one_and_share_the_entropy_fit(tmp_path):
    import json

    from ltcodec.training.image import main

    common = ["--rate", "hard", "--quality-weighting", "log", "--lr", "1e-3", "--log-every", "1"]
    runs = {name: tmp_path / name for name in ("start", "one", "two")}
    main(_tiny_run(tmp_path, runs["start"]) + common + ["--steps", "0"])
    fit = ["--fit-entropy", "3", "--fit-crop", "64", "--fit-batch", "2"]
    main(_tiny_run(tmp_path, runs["one"]) + common + fit + ["--steps", "3"])
    main(_tiny_run(tmp_path, runs["two"]) + common + fit + ["--steps", "3", "--ranks", "2"])
    start, one, two = (torch.load(run / "last.ckpt", weights_only=False) for run in runs.values())
    assert one["step"] == two["step"] == 3 and one["numpy_rng"] == two["numpy_rng"]
    # The entropy model was fitted by the first process alone, as the single process fitted it.
    held = [k for k in one["model"] if k.split(".")[0] in ("h_a", "h_s", "z_density")]
    assert held and all(torch.equal(one["model"][k], two["model"][k]) for k in held)
    assert not all(torch.equal(one["model"][k], start["model"][k]) for k in held)
    flat = lambda state: torch.cat([v.flatten().float() for v in state["model"].values()])  # noqa: E731
    moved, apart = float((flat(one) - flat(start)).norm()), float((flat(one) - flat(two)).norm())
    assert moved > 1e-3 and apart < 0.05 * moved  # only the processes' own rate noise differs
    log = [json.loads(line) for line in (runs["two"] / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]  # one log, written by the first process
    assert [r["step"] for r in log if "entropy_fit_steps" in r] == [0]


def test_export_writes_a_model_with_refitted_tables_and_its_card(tmp_path):
    """The export command end to end on a tiny run: model file, card naming the refitted tables, Kodak table."""
    from ltcodec.image_codec import ImageCodecModel
    from ltcodec.training.export_image import main as export
    from ltcodec.training.image import main

    out = tmp_path / "run"
    main(_tiny_run(tmp_path, out) + ["--steps", "2"])
    export(["--ckpt", str(out / "last.ckpt"), "--name", "tiny", "--out", str(tmp_path / "models"),
            "--kodak", str(tmp_path / "data"), "--calibration", str(tmp_path / "data"), "--table-every", "1",
            "--scale-floor-level", "-32"])
    model = ImageCodecModel.from_file(tmp_path / "models" / "tiny.safetensors")
    assert model.qualities == 8
    card = (tmp_path / "models" / "tiny.md").read_text()
    assert "Box-code tables of the latent refitted at export" in card and "2 training crops" in card
    assert card.count("\n| 8 |") == 1  # the measured table reaches the top quality
