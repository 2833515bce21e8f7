"""The audio training recipe runs, checkpoints, resumes and exports a model that codes (tiny settings)."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from ltcodec.audio import audio_info, decode_audio, encode_audio
from ltcodec.audio_codec import AudioCodecModel, export_audio_model
from ltcodec.training.export_audio import load_trained, training_metadata
from ltcodec.audio_model import AudioLatticeCodec, AudioModelConfig
from ltcodec.training import audio as train_audio


def _corpus(root):
    rng = np.random.default_rng(0)
    for kind, rate, ch in (("speech", 16000, 1), ("music", 44100, 2)):
        (root / kind).mkdir(parents=True)
        for i in range(2):
            t = np.arange(rate * 2) / rate
            x = 0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)[:, None] + 0.02 * rng.standard_normal((t.size, ch))
            sf.write(root / kind / f"{i}.flac", x, rate)


def test_train_resume_export(tmp_path, monkeypatch):
    monkeypatch.setattr(train_audio, "CACHE", tmp_path / "cache")
    _corpus(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--data", str(tmp_path / "data"), "--media", str(tmp_path / "none"), "--eval", str(tmp_path / "data"),
              "--out", str(out), "--batch", "2", "--frames", "8", "--channels", "4", "--M", "16",
              "--log-every", "1", "--eval-every", "2", "--threads", "1"]
    train_audio.main(common + ["--steps", "2"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["step"] == 2
    train_audio.main(common + ["--steps", "3", "--resume"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert any("eval" in r and "eval_ema" in r for r in log)
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert set(state["ema"]) == set(state["model"]) and state["ema_decay"] == 0.999
    assert state["history"] == [] and state["lr"] == 3e-4
    del state["lr"]  # a checkpoint from before the rate was kept: every such run trained at 3e-4
    torch.save(state, out / "last.ckpt")
    train_audio.main(common + ["--steps", "4", "--resume", "--lr", "1.5e-4"])
    change = {"step": 3, "lr_from": 3e-4, "lr": 1.5e-4}
    assert torch.load(out / "last.ckpt", weights_only=False)["history"] == [change]
    assert change in [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_audio.main(common + ["--steps", "5", "--resume", "--lr", "1.5e-4", "--rate", "hard"])
    rated = torch.load(out / "last.ckpt", weights_only=False)
    assert rated["rate"] == "hard" and rated["history"] == [change, {"step": 4, "rate_from": "noise", "rate": "hard"}]
    assert rated["mel_weight"] == 0.0
    train_audio.main(common + ["--steps", "6", "--resume", "--mel-weight", "1"])
    train_audio.main(common + ["--steps", "7", "--resume"])  # kept without the flag; so is the rate
    mel = torch.load(out / "last.ckpt", weights_only=False)
    assert mel["mel_weight"] == 1.0 and mel["history"][-1] == {"step": 5, "mel_weight_from": 0.0, "mel_weight": 1.0}
    assert mel["lr"] == 1.5e-4  # not the default 3e-4: a resume without --lr keeps the run's rate
    ladder = [2.5, 6.0, 9.0, 13.0, 19.0, 27.0, 38.0, 54.0]
    train_audio.main(common + ["--steps", "8", "--resume", "--lr", "1.5e-4", "--target-kbps", *map(str, ladder)])
    train_audio.main(common + ["--steps", "9", "--resume", "--lr", "1.5e-4"])  # kept without the flag
    targeted = torch.load(out / "last.ckpt", weights_only=False)
    assert list(targeted["config"]["target_kbps"]) == ladder
    assert targeted["history"][-1] == {"step": 7, "target_kbps_from": [4.0, 6.0, 9.0, 13.0, 19.0, 27.0, 38.0, 54.0],
                                       "target_kbps": ladder}
    with pytest.raises(SystemExit, match="needs 8 values"):
        train_audio.main(common + ["--steps", "10", "--resume", "--target-kbps", "3", "6"])
    assert targeted["quality_weighting"] == "sum"
    train_audio.main(common + ["--steps", "11", "--resume", "--lr", "1.5e-4", "--quality-weighting", "log"])
    train_audio.main(common + ["--steps", "12", "--resume", "--lr", "1.5e-4"])  # kept without the flag
    weighted = torch.load(out / "last.ckpt", weights_only=False)
    assert weighted["quality_weighting"] == "log"
    assert weighted["history"][-1] == {"step": 9, "quality_weighting_from": "sum", "quality_weighting": "log"}
    assert sum(not math.isnan(v) for v in weighted["quality_losses"]) >= 2  # three batches of two qualities
    net = AudioLatticeCodec(AudioModelConfig.from_dict(state["config"]))
    net.load_state_dict(state["model"])
    export_audio_model(net, [np.zeros(24000, np.float32)], tmp_path / "m.safetensors", "m")
    model = AudioCodecModel.from_file(tmp_path / "m.safetensors")
    x = np.sin(np.arange(8000) / 5.0).astype(np.float32) * 0.3
    data = encode_audio(x, 16000, model=model)
    assert audio_info(data).frames == 8000
    assert decode_audio(data, model=model)[0].shape == (8000,)


def _tiny_export(tmp_path, keep_training_state=True):
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(3)
    net = AudioLatticeCodec(AudioModelConfig(channels=4, M=16, N=8))
    signal = (np.random.default_rng(1).standard_normal(24000) * 0.1).astype(np.float32)
    path = tmp_path / "m.safetensors"
    run = {"step": 7, "history": [{"step": 5, "lr_from": 3e-4, "lr": 1.5e-4}],
           "log_weights": torch.linspace(0.5, -6.5, 8), "rate_ema": torch.linspace(5.0, 40.0, 8)}
    export_audio_model(net, [signal], path, "m", extra_meta=training_metadata(run))
    if not keep_training_state:  # what files from before train.* was kept look like
        with safe_open(str(path), "pt") as f:
            meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if not k.startswith("train.")}
        save_file(arrays, str(path), metadata=meta)
    return net, path, signal


def test_training_restarts_from_a_shipped_file_with_its_hyperprior(tmp_path):
    net, path, _ = _tiny_export(tmp_path)
    config, weights, record = train_audio.load_init(path)
    assert record["step"] == 7 and record["history"] == [{"step": 5, "lr_from": 3e-4, "lr": 1.5e-4}]
    again = AudioLatticeCodec(config)
    missing, unexpected = again.load_state_dict(weights, strict=False)
    assert not missing and not unexpected
    for k, v in net.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=2e-3, atol=2e-3)  # fp16 conv kernels


def test_an_old_file_without_float_hyperprior_gets_an_equivalent_one(tmp_path):
    from ltcodec.latent_coding import MEAN_GRID
    from ltcodec.training.restore import table_pmfs, table_radius

    net, path, signal = _tiny_export(tmp_path, keep_training_state=False)
    config, weights, _ = train_audio.load_init(path)
    rebuilt = AudioLatticeCodec(config)
    rebuilt.load_state_dict(weights)
    shipped = AudioCodecModel.from_file(path)
    # Its float h_s computes what the integer one does (up to the integer network's rounding) ...
    with torch.no_grad():
        y = net.g_a(torch.from_numpy(signal[:4800])[None, None])
        z = torch.round(net.h_a(y * net.gains(torch.tensor([4.0]))[0]))
        out = rebuilt.h_s(z)[0]
        want = shipped.h_s_int(z[:, :, None].long())[0, :, 0].double()
    scale = torch.cat([torch.full((16, 1), float(MEAN_GRID)), torch.full((16, 1), 8.0)])
    assert (torch.round(out.double() * scale) - want).abs().max() <= 4
    # ... its weights are not the integer ones' scale but a trained layer's, and ...
    assert all(0.01 < float(m.weight.detach().abs().max()) < 10 for m in rebuilt.h_s if hasattr(m, "weight"))
    # ... its z density is the frozen tables' (the same pmf to about 1%).
    t = shipped.z_tables
    radius = table_radius(t.starts, t.offsets)
    frozen = table_pmfs(t.freqs, t.starts, t.offsets, radius)
    assert frozen.sum(axis=1).min() > 0.999 and (frozen > 0.001).sum() > 10 * config.N
    np.testing.assert_allclose(rebuilt.z_density.pmf(radius), frozen, atol=0.01 * frozen.max())


def test_a_run_started_from_a_file_records_it_and_warms_up(tmp_path, monkeypatch):
    monkeypatch.setattr(train_audio, "CACHE", tmp_path / "cache")
    _corpus(tmp_path / "data")
    _, path, _ = _tiny_export(tmp_path)
    out = tmp_path / "run"
    train_audio.main(["--data", str(tmp_path / "data"), "--media", str(tmp_path / "none"), "--eval",
                      str(tmp_path / "none"), "--out", str(out), "--batch", "2", "--frames", "8", "--log-every", "1",
                      "--threads", "1", "--init", str(path), "--warmup", "10", "--steps", "9"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["step"] == 9 and state["warmup"] == (7, 10)
    # The rate weights go on from the file's (two dual steps of at most 0.003·|log(rate/target)| each).
    torch.testing.assert_close(state["log_weights"], torch.linspace(0.5, -6.5, 8), atol=0.1, rtol=0)
    assert state["history"] == [{"step": 5, "lr_from": 3e-4, "lr": 1.5e-4},
                                {"step": 7, "init_from": "m.safetensors", "warmup": 10, "lr": 3e-4}]


def test_the_hard_audio_rate_is_the_coded_rate():
    torch.manual_seed(0)
    net = AudioLatticeCodec(AudioModelConfig(channels=4, M=16))
    x = torch.randn(1, 1, net.config.hop * 16) * 0.1
    q = torch.tensor([2.0])
    torch.testing.assert_close(net(x, q, rate="hard")["bits_y"].detach(), net.estimate(x, q)["bits_y"])


def test_the_mel_term_resolves_low_frequencies_more_finely_than_linear_bins():
    rate = 24000
    fb = train_audio.mel_filterbank(rate, 1024, 64)
    assert fb.shape == (64, 513) and bool((fb.sum(1) > 0).all())  # no empty band
    centres = fb.argmax(1) * rate / 1024
    # Below 2 kHz lie 1/6 of the linear bins but nearly half of the mel bands (mel(2 kHz) / mel(12 kHz)).
    assert 0.42 < float((centres < 2000).mean()) < 0.5
    t = torch.arange(rate) / rate
    x = (0.3 * torch.sin(2 * torch.pi * 300 * t) + 0.3 * torch.sin(2 * torch.pi * 9000 * t))[None, None]
    assert float(train_audio.mel_distance(x, x, rate)) == 0.0
    assert float(train_audio.mel_distance(x, 0.5 * x, rate)) == pytest.approx(math.log(2), rel=1e-2)  # log magnitudes: a level change shows in full


def test_a_checkpoint_gives_its_moving_average_or_its_training_weights(tmp_path):
    config = AudioModelConfig(channels=4, M=16, N=8)
    raw, averaged = AudioLatticeCodec(config).state_dict(), AudioLatticeCodec(config).state_dict()
    torch.save({"config": config.to_dict(), "model": raw, "ema": averaged, "step": 7}, tmp_path / "a.ckpt")
    torch.save({"config": config.to_dict(), "model": raw, "step": 7}, tmp_path / "b.ckpt")
    key = "g_a.0.weight"
    for path, ema, expected, kind in [("a.ckpt", True, averaged, "ema"), ("a.ckpt", False, raw, "raw"),
                                      ("b.ckpt", True, raw, "raw")]:
        net, state = load_trained(tmp_path / path, ema=ema)
        assert torch.equal(net.state_dict()[key], expected[key])
        assert state["exported_weights"] == kind and state["step"] == 7


def test_the_corpus_skips_work_in_progress_and_files_gone_since_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(train_audio, "CACHE", tmp_path / "cache")
    _corpus(tmp_path / "data")
    work = tmp_path / "data" / ".work" / "x" / "music"  # a corpus builder's unpacking
    work.mkdir(parents=True)
    sf.write(work / "raw.flac", np.zeros((48000, 1)), 24000)
    real = train_audio._cached_signals

    def vanishing(path, rate, cache_dir):
        if path.name == "1.flac" and "speech" in path.parts:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path, rate, cache_dir)

    monkeypatch.setattr(train_audio, "_cached_signals", vanishing)
    corpus = train_audio.load_corpus([tmp_path / "data"], 24000)
    assert len(corpus["speech"]) == 1  # the other one vanished: skipped, not fatal
    assert len(corpus["music"]) == 4  # two stereo files, mid and side each; nothing from .work


def test_two_processes_train_as_one_on_the_whole_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("LTCODEC_CACHE", str(tmp_path / "cache"))  # the second process imports afresh
    monkeypatch.setattr(train_audio, "CACHE", tmp_path / "cache")
    _corpus(tmp_path / "data")
    common = ["--data", str(tmp_path / "data"), "--media", str(tmp_path / "none"), "--eval", str(tmp_path / "none"),
              "--batch", "4", "--frames", "8", "--channels", "4", "--M", "16", "--log-every", "1", "--threads", "1",
              "--rate", "hard", "--quality-weighting", "log"]
    train_audio.main(common + ["--out", str(tmp_path / "start"), "--steps", "0"])
    train_audio.main(common + ["--out", str(tmp_path / "one"), "--steps", "3"])
    train_audio.main(common + ["--out", str(tmp_path / "two"), "--steps", "3", "--ranks", "2"])
    start, one, two = (torch.load(tmp_path / run / "last.ckpt", weights_only=False) for run in ("start", "one", "two"))
    assert one["step"] == two["step"] == 3
    assert one["numpy_rng"] == two["numpy_rng"]  # the same crops and qualities were drawn
    flat = lambda state: torch.cat([v.flatten() for v in state["model"].values()])  # noqa: E731
    moved, apart = float((flat(one) - flat(start)).norm()), float((flat(one) - flat(two)).norm())
    # Only the dither of the hyper-latent's rate differs (each process has its own noise).
    assert moved > 1e-3 and apart < 0.05 * moved
    torch.testing.assert_close(two["rate_ema"], one["rate_ema"], rtol=0.05, atol=0)
    torch.testing.assert_close(torch.tensor(two["quality_losses"]), torch.tensor(one["quality_losses"]),
                               rtol=0.05, atol=0, equal_nan=True)
    assert two["cpu_seconds"] > 0
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]  # one log, written by the first process
    # A fresh run records its processes; a run resumed on more of them records the change.
    assert two["ranks"] == 2 and not any("ranks_from" in h for h in two["history"])
    train_audio.main(common + ["--out", str(tmp_path / "one"), "--steps", "4", "--ranks", "2", "--resume"])
    resumed = torch.load(tmp_path / "one" / "last.ckpt", weights_only=False)
    assert resumed["ranks"] == 2 and resumed["history"][-1] == {"step": 3, "ranks_from": 1, "ranks": 2}
    with pytest.raises(SystemExit, match="must split evenly"):
        train_audio.main(common + ["--out", str(tmp_path / "three"), "--steps", "1", "--ranks", "3"])


def test_the_adversarial_terms_teach_the_decoder_and_not_the_discriminator():
    from ltcodec.training.adversary import SpectrogramDiscriminator, discriminator_loss, generator_terms

    torch.manual_seed(0)
    critic = SpectrogramDiscriminator(filters=4)
    x = torch.randn(3, 1, 4096) * 0.1
    x_hat = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    terms = generator_terms(critic, x, x_hat)
    assert terms.shape == (3,) and torch.isfinite(terms).all()
    terms.sum().backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())  # the decoder's loss leaves the critic alone
    # On the originals themselves feature matching is zero: only the hinge of their judgement remains.
    same = generator_terms(critic, x, x.clone())
    hinge = sum(torch.relu(1 - logits).flatten(1).mean(1) for logits, _ in critic(x)) / len(critic.scales)
    torch.testing.assert_close(same, hinge)
    # A few steps of its own loss teach it to tell the two apart.
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    noisy = x + 0.3 * torch.randn_like(x)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = discriminator_loss(critic, x, noisy)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_an_adversarial_run_keeps_its_discriminator_across_resumes_and_processes(tmp_path, monkeypatch):
    from ltcodec.training.card import history_line

    monkeypatch.setenv("LTCODEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train_audio, "CACHE", tmp_path / "cache")
    _corpus(tmp_path / "data")
    common = ["--data", str(tmp_path / "data"), "--media", str(tmp_path / "none"), "--eval", str(tmp_path / "none"),
              "--batch", "4", "--frames", "8", "--channels", "4", "--M", "16", "--log-every", "1", "--threads", "1",
              "--out", str(tmp_path / "run")]
    train_audio.main(common + ["--steps", "1"])
    train_audio.main(common + ["--steps", "3", "--resume", "--adversarial", "0.5", "--disc-filters", "4"])
    first = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    change = first["history"][-1]
    assert change == {"step": 1, "adversarial_from": 0.0, "adversarial": 0.5}
    assert "weight 0 to 0.5" in history_line(change)
    assert first["adversarial"] == 0.5 and first["critic_filters"] == 4
    # Resumed without the option, on two processes: the weight and the discriminator go on.
    train_audio.main(common + ["--steps", "4", "--resume", "--ranks", "2"])
    second = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert second["adversarial"] == 0.5 and second["history"][-2:] == [change, {"step": 3, "ranks_from": 1, "ranks": 2}]
    assert not all(torch.equal(first["critic"][k], second["critic"][k]) for k in first["critic"])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "adv" in r] == [2, 3, 4] and all(r["adv"] > 0 and r["critic"] > 0
                                                                       for r in log if "adv" in r)
