import json

import pytest

from bench.progress import main, read_evals


def _image_rows(scale):
    """Eight qualities whose rates are ``scale`` times a reference curve at the same PSNR."""
    return [{"quality": q, "bpp": scale * 0.05 * 1.6 ** q, "psnr": 24.0 + 1.5 * q} for q in range(1, 9)]


def _audio_rows(stft):
    return [{"quality": q, "kbps": 3.0 * q, "stft": stft + (8 - q) * 0.1, "si_sdr": 10.0} for q in range(1, 9)]


def _log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_fork_continues_its_parents_history_and_ranks_by_bd_rate(tmp_path, capsys):
    parent = _log(tmp_path / "a.jsonl", [
        {"step": 10, "loss": 1.0},
        {"step": 100, "eval": _image_rows(2.0), "eval_ema": _image_rows(1.0)},
        {"step": 200, "eval": _image_rows(2.0), "eval_ema": _image_rows(5.0)}])  # superseded by the fork's
    fork = _log(tmp_path / "b.jsonl", [{"step": 200, "eval": _image_rows(2.0), "eval_ema": _image_rows(0.9)}])
    evals = read_evals([parent, fork])
    assert list(evals) == [100, 200] and evals[200] == _image_rows(0.9)
    assert read_evals([parent, fork], "training")[100] == _image_rows(2.0)
    main([str(parent), str(fork)])
    out = capsys.readouterr().out
    assert "| 100 | +0.00% | +0.00% | 36.00 |" in out
    assert "| 200 | -10.00% | -10.00% |" in out  # 0.9 × the bits at every PSNR
    main([str(parent), str(fork), "--anchor", "200", "--weights", "training"])
    assert "| 100 | +0.00% |" in capsys.readouterr().out
    crops = _log(tmp_path / "c.jsonl", [{"step": 300, "eval_ema": _image_rows(1.0),
                                         "eval_train_ema": _image_rows(0.5)}])
    assert read_evals([crops], signals="train") == {300: _image_rows(0.5)}
    assert read_evals([crops]) == {300: _image_rows(1.0)}


def test_audio_progress_is_the_top_qualities_spectral_distance(tmp_path, capsys):
    log = _log(tmp_path / "log.jsonl", [{"step": s, "eval": _audio_rows(1.0), "eval_ema": _audio_rows(d)}
                                        for s, d in ((1000, 0.8), (2000, 0.72))])
    main([str(log), "--since", "500", "--out", str(tmp_path / "p.md")])
    out = capsys.readouterr().out
    assert (tmp_path / "p.md").read_text().endswith(out) and "--since 500" in (tmp_path / "p.md").read_text()
    # q5–8 distances are d + 0.3, 0.2, 0.1, 0 → mean d + 0.15
    assert "| 1,000 | 0.9500 | +0.00% | 19.5 |" in out and "| 2,000 | 0.8700 | -8.42% |" in out


def test_evals_restored_from_a_card_without_the_measure_are_left_out(tmp_path, capsys):
    # A run started from a model file has its card's evals in its log: kbps and SI-SDR, no STFT distance.
    card_rows = [{k: v for k, v in r.items() if k != "stft"} for r in _audio_rows(1.0)]
    log = _log(tmp_path / "log.jsonl", [{"step": 900, "eval_ema": card_rows},
                                        {"step": 1000, "eval_ema": _audio_rows(0.8)}])
    assert list(read_evals([log])) == [1000]
    main([str(log)])
    assert "| 1,000 | 0.9500 | +0.00% |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no eval at step 900; evals at 1,000"):
        main([str(log), "--anchor", "900"])


def test_bad_requests_say_what_is_missing(tmp_path):
    log = _log(tmp_path / "log.jsonl", [{"step": 5, "eval_ema": _audio_rows(1.0)}])
    with pytest.raises(SystemExit, match="no such log"):
        main([str(tmp_path / "absent.jsonl")])
    with pytest.raises(SystemExit, match="no periodic evals in those logs from step 10"):
        main([str(log), "--since", "10"])
    with pytest.raises(SystemExit, match="no eval at step 7; evals at 5"):
        main([str(log), "--anchor", "7"])
