"""The image bench's codec list: the slow encodes run only when named."""

from bench.codecs import all_codecs


def test_slow_encodes_run_only_when_named():
    codecs = all_codecs()
    assert [c.name for c in codecs if c.default] == ["ltcodec", "jpeg420", "jpeg444", "webp", "avif", "jxl", "x265"]
    assert {c.name: c.refine for c in codecs if not c.default} == {"ltcodec-refine": 30, "ltcodec-refine10": 10}
