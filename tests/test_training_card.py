"""Model-card lines built from a training run's checkpoint and log."""

import json

import pytest

from ltcodec.training.card import (CHANGE_KEYS, RecipeChanges, eval_records, history_line, is_change,
                                   learning_rate_line, progress_section, recorded_settings)


def _log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_eval_records_keep_the_last_eval_per_step_up_to_the_exported_step(tmp_path):
    row = [{"quality": 1, "bpp": 0.5, "psnr": 30.0}]
    log = _log(tmp_path / "log.jsonl", [
        {"step": 100, "loss": 1.0},
        {"step": 5000, "eval": row},
        {"step": 5000, "eval": [dict(row[0], psnr=31.0)]},  # a resumed run evaluated the step again
        {"step": 10000, "eval": row},
    ])
    recs = eval_records(log, 9000)
    assert [r["step"] for r in recs] == [5000] and recs[0]["eval"][0]["psnr"] == 31.0
    assert eval_records(tmp_path / "missing.jsonl", 9000) == [] and eval_records(None, 9000) == []


def test_progress_section_prefers_the_average_and_marks_which_weights():
    recs = [{"step": 5000, "eval": [{"quality": 1, "v": 1.0}]},
            {"step": 10000, "eval": [{"quality": 1, "v": 2.0}], "eval_ema": [{"quality": 1, "v": 3.0}]}]
    lines = progress_section(recs, (1, 2), lambda r: f"{r['v']:.1f}", "An eval")
    assert "| 5,000 | training | 1.0 | – |" in lines and "| 10,000 | average | 3.0 | – |" in lines
    assert progress_section(recs, (1,), str, "x", key="eval_train_ema") == []


def test_history_lines_name_each_change():
    assert history_line({"step": 31774, "lr_from": 2e-4, "lr": 1e-4}) == (
        "* Learning rate changed at step 31,774 from 0.0002 to 0.0001 (`--lr`).")
    assert "from λ = 0.1, 0.2" in history_line({"step": 1, "lambdas_from": [0.1, 0.2], "lambdas": [0.2, 0.3]})
    with pytest.raises(ValueError):
        history_line({"step": 1})


def test_every_kind_of_change_has_a_card_line():
    examples = {"lambdas_from": [0.1, 0.2], "lr_from": 2e-4, "scale_floor_level_from": -32, "channels_from": 16,
                "transform_N_from": 96, "analysis_blocks_from": 0,
                "latent_from": 128, "crop_from": 128, "init_from": "ltc-image-e8.safetensors", "rate_from": "noise",
                "mel_weight_from": 0.0, "target_kbps_from": [4.0, 6.0],
                "likelihood_floor_from": 1e-9, "quality_weighting_from": "sum", "context_from": "none",
                "context_fit_steps": 600, "entropy_fit_steps": 600, "ranks_from": 1, "adversarial_from": 0.0}
    assert set(examples) == set(CHANGE_KEYS)
    for key, before in examples.items():
        change = {"step": 1, key: before, key.removesuffix("_from"): before}
        assert is_change(change) and history_line(change).startswith("* ")
    assert not is_change({"step": 1, "loss": 2.0, "lr": 1e-4})


def test_recorded_settings_are_the_last_each_change_set():
    history = [{"step": 5, "rate_from": "noise", "rate": "hard"},
               {"step": 7, "init_from": "m.safetensors", "warmup": 10},  # no setting: nothing in force
               {"step": 9, "quality_weighting_from": "sum", "quality_weighting": "log"},
               {"step": 12, "rate_from": "hard", "rate": "noise"}]
    assert recorded_settings(history) == {"rate": "noise", "quality_weighting": "log"}
    assert recorded_settings([]) == {}


def test_recipe_changes_keep_the_old_history_and_log_only_the_new_changes(tmp_path, capsys):
    old = {"step": 10, "lr_from": 2e-4, "lr": 1e-4}
    changes = RecipeChanges([old])
    changes.add(None, "learning rate")
    new = {"step": 20, "scale_floor_level_from": -32, "scale_floor_level": -20}
    changes.add(new, "scale floor")
    assert changes.history == [old, new]
    assert "scale floor changed" in capsys.readouterr().out
    log = tmp_path / "log.jsonl"
    with open(log, "w") as f:
        changes.write_new(f)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [new]
    assert all(is_change(c) for c in changes.history)


def test_a_cards_history_and_progress_tables_read_back():
    from ltcodec.training.card import evals_from_card, history_from_card, progress_section

    ladder = [0.0001, 0.001, 0.01]
    history = [{"step": 100, "lambdas_from": [0.0002, 0.001, 0.01], "lambdas": [0.00015, 0.001, 0.01]},
               {"step": 1_200, "lr_from": 2e-4, "lr": 1e-4},
               {"step": 1_500, "scale_floor_level_from": -32, "scale_floor_level": -20},
               {"step": 2_000, "channels_from": 16, "channels": 24},
               {"step": 2_200, "latent_from": 128, "latent": 192},
               {"step": 2_500, "crop_from": 128, "batch_from": 8, "crop": 192, "batch": 4},
               {"step": 3_000, "lambdas_from": [0.00015, 0.001, 0.01], "lambdas": ladder},
               {"step": 4_000, "init_from": "ltc-image-e8.safetensors", "warmup": 1000},
               {"step": 4_200, "init_from": "step-4200.ckpt", "warmup": 200, "lr": 1e-05},
               {"step": 4_500, "rate_from": "noise", "rate": "hard"},
               {"step": 5_000, "mel_weight_from": 0.0, "mel_weight": 1.0},
               {"step": 6_000, "target_kbps_from": [4.0, 6.5], "target_kbps": [2.5, 6.5]},
               {"step": 7_000, "likelihood_floor_from": 1e-9, "likelihood_floor": 1.5e-05},
               {"step": 7_500, "ranks_from": 1, "ranks": 2},
               {"step": 8_000, "adversarial_from": 0.0, "adversarial": 0.2}]
    card = "# m\n\n## Training\n\n" + "\n".join(history_line(h) for h in history) + "\n"
    assert history_from_card(card, ladder) == history
    records = [{"step": s, "eval_ema": [{"quality": q, "bpp": 0.1 * q + s / 1e5, "psnr": 20.0 + q} for q in (1, 3)],
                "eval_train_ema": [{"quality": q, "bpp": 0.2 * q, "psnr": 21.0 + q} for q in (1, 3)]}
               for s in (1000, 2000)]
    cell = lambda r: f"{r['bpp']:.3f} bpp, {r['psnr']:.2f} dB"  # noqa: E731
    card += "\n".join(["## Training progress", "", *progress_section(records, (1, 3), cell, "Kodak"),
                       *progress_section(records, (1, 3), cell, "Train", key="eval_train_ema")])
    back = evals_from_card(card)
    assert [r["step"] for r in back] == [1000, 2000]
    for got, want in zip(back, records):
        for key in ("eval_ema", "eval_train_ema"):
            assert [(r["quality"], round(r["bpp"], 3), r["psnr"]) for r in got[key]] == \
                [(r["quality"], round(r["bpp"], 3), r["psnr"]) for r in want[key]]
        assert got["eval"] == got["eval_ema"]


def test_the_card_says_the_learning_rate_a_run_ended_with():
    assert learning_rate_line({"lr": 1e-05, "step": 9}) == ["* Base learning rate at the last step: 1e-05."]
    assert learning_rate_line({"step": 9}) == []  # a checkpoint from before runs kept their rate
