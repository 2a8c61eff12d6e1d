"""Compile stages: pure functions ``(inputs, params) -> output`` with a VERSION each; no dask, no cache."""
