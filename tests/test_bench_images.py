"""The image bench's codec list (the slow encodes run only when named) and the rows it keeps on a rerun."""

from bench.codecs import all_codecs
import pytest



def test_slow_encodes_run_only_when_named():
    codecs = all_codecs()
    assert [c.name for c in codecs if c.default] == ["ltcodec", "jpeg420", "jpeg444", "webp", "avif", "jxl", "x265"]
    assert {c.name: c.refine for c in codecs if not c.default} == {"ltcodec-refine": 30, "ltcodec-refine10": 10}


def test_a_rerun_keeps_only_rows_of_the_current_model():
    from bench.images import keep_previous

    old = {"ltcodec": {"model_sha256": "aa"}, "ltcodec-refine10": {"model_sha256": "bb"},
           "ltcodec-refine": {}, "webp": {"model_sha256": None}}
    kept, dropped = keep_previous(old, ["ltcodec"], lambda name: "aa" if name.startswith("ltcodec") else None)
    # The rerun codec is measured afresh; a row of another model goes, and so does one of a codec with a
    # model that never recorded which (it cannot be shown current); a codec without a model stays.
    assert set(kept) == {"webp"} and dropped == ["ltcodec-refine10", "ltcodec-refine"]
    same = {"ltcodec-refine10": {"model_sha256": "aa"}, "jpeg420": {}}
    assert keep_previous(same, ["ltcodec"], lambda name: "aa" if name.startswith("ltcodec") else None) == (same, [])


def test_ltcodec_rows_name_their_model():
    from bench.codecs import Ltcodec

    codec = Ltcodec()
    assert codec.model_sha256() is None
    assert codec.available() is None  # the shipped default model
    assert len(codec.model_sha256()) == 64


def test_the_report_says_which_psnr_range_costs_ltcodec_its_bd_rate():
    from bench.images import where_lost

    def webp_bpp(q):  # doubles every 3 dB
        return 0.1 * 2 ** ((q - 26) / 3)

    webp = [{"bpp": webp_bpp(q), "psnr": q} for q in (26.0, 29.0, 32.0, 35.0, 38.0)]
    ours = [{"bpp": webp_bpp(q) * f, "psnr": q} for q, f in ((27.0, 1.6), (30.0, 0.9), (33.0, 0.9), (36.0, 1.6))]
    lines = where_lost({"webp": webp, "ltcodec": ours})
    rows = [line for line in lines if line.startswith("| 2") or line.startswith("| 3")]
    assert [r.split(" | ")[0] for r in rows] == ["| 27.00–30.00", "| 30.00–33.00", "| 33.00–36.00"]
    ratios = [float(r.split(" | ")[2]) for r in rows]
    assert ratios[1] < 1.0 < 1.1 < min(ratios[0], ratios[2])  # the ends are where the bits go
    assert sum(float(r.split(" | ")[3].rstrip("% |")) for r in rows) == pytest.approx(100, abs=2)
    assert where_lost({"ltcodec": ours}) == []
