"""The image bench's codec list (the slow encodes run only when named) and the rows it keeps on a rerun."""

from bench.codecs import all_codecs


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
