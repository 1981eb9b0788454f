"""The benchmark protocol of ``lightning_autoprune`` (``make bench``); see :mod:`benchmarks.protocol`."""
