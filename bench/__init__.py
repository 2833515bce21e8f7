"""Benchmarks of ltcodec (run as modules: python -m bench.synthetic, python -m bench.images, …)."""
