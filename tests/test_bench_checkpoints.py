import math

import numpy as np
import torch

from bench.bdrate import bd_rate
from bench.checkpoints import compare, main, report, with_entropy_model
from ltcodec.image_model import ImageModelConfig, LatticeHyperprior


def _net(seed: int) -> LatticeHyperprior:
    torch.manual_seed(seed)
    return LatticeHyperprior(ImageModelConfig(N=8, M=8, context="checkerboard"))


def test_a_model_against_itself_is_zero_and_each_curve_is_its_own():
    img = (np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)
    a, b = _net(0), _net(1)
    results = compare([a, a, b], [img])
    assert results[0]["bd_rate_vs_first"] == results[1]["bd_rate_vs_first"] == 0.0
    ref, other = results[0]["rows"], results[2]["rows"]
    expected = bd_rate([r["bpp"] for r in ref], [r["psnr"] for r in ref], [r["bpp"] for r in other],
                       [r["psnr"] for r in other])
    assert results[2]["bd_rate_vs_first"] == expected or math.isnan(expected)  # untrained: curves may not overlap
    assert results[1]["bd_rate_vs_first_from_q2"] == 0.0
    without_q1 = bd_rate([r["bpp"] for r in ref[1:]], [r["psnr"] for r in ref[1:]], [r["bpp"] for r in other[1:]],
                         [r["psnr"] for r in other[1:]])
    got = results[2]["bd_rate_vs_first_from_q2"]
    assert got == without_q1 or (math.isnan(got) and math.isnan(without_q1))
    assert results[0]["rows"] == results[1]["rows"] and results[2]["rows"] != results[0]["rows"]
    assert [r["quality"] for r in results[2]["rows"]] == list(range(1, 9))
    text = report(["a", "a again", "b"], results, 1, "python -m bench.checkpoints a b", "now")
    assert text.count("\n| ") == 3 + 1 and "| a again |" in text


def test_an_entropy_model_moves_to_other_transforms_alone():
    a, b = _net(0), _net(1)
    moved = with_entropy_model(_net(0), b)
    for k, v in moved.state_dict().items():
        source = b if k.startswith(("h_a.", "h_s.", "z_density.", "ctx.")) else a
        assert torch.equal(v, source.state_dict()[k]), k


def test_the_command_compares_training_checkpoints(tmp_path, capsys):
    from PIL import Image

    from ltcodec.training.image import main as train

    data, kodak = tmp_path / "data", tmp_path / "kodak"
    data.mkdir(), kodak.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
        Image.fromarray((rng.random((48, 40, 3)) * 255).astype(np.uint8)).save(kodak / f"k{i}.png")
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        train(["--data", str(data), "--eval", str(tmp_path / "none"), "--out", str(out), "--N", "8", "--M", "8",
               "--batch", "2", "--crop", "64", "--threads", "1", "--eval-every", "0", "--keep-every", "0",
               "--steps", "2", "--seed", str(seed)])
        runs.append(out / "last.ckpt")
    capsys.readouterr()
    main([str(runs[0]), str(runs[1]), "--set", str(kodak), "--limit", "2", "--json", str(tmp_path / "c.json")])
    text = capsys.readouterr().out
    assert "on 2 Kodak images" in text and text.count("checkpoint `last.ckpt` at step 2") == 2
    assert (tmp_path / "c.json").exists()
    main([str(runs[0]), str(runs[0]), "--set", str(kodak), "--limit", "1", "--entropy-from", str(runs[1])])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| checkpoint")]
    assert "with the entropy model of" not in lines[0] and "with the entropy model of" in lines[1]
