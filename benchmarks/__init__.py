"""Throughput, memory and scaling benchmarks of both backends (not tests): ``python -m benchmarks``.

See ``benchmarks/README.md`` for what is measured, how (on a shared machine), the targets,
and the latest results. Importing this package imports neither TensorFlow nor PyTorch: each
backend is measured in its own worker process (:mod:`benchmarks.worker`).
"""
