"""Helpers for teaching and measuring, not part of EncNet itself.

The notebooks and the tests use them to show and check what the package does;
training and inference never import them.

- :mod:`encnet.teaching.processes`: :func:`~encnet.teaching.processes.spawn`
  runs a function on several local CPU processes joined by a gloo process
  group, so that code written for many GPUs runs on a laptop.
- :mod:`encnet.teaching.syncbn`: synchronized batch norm at work across such
  processes (notebook 04): against ``BatchNorm`` on the whole batch, the
  collectives it issues, DistributedDataParallel training.
- :mod:`encnet.teaching.memory`: the extra peak memory of one Encoding Layer
  pass, measured in a fresh process (notebook 01, ``benchmarks/encoding.py``).
- :mod:`encnet.teaching.notebook`: the set-up every notebook starts with (the
  quick switch, seed, threads, figure size).
"""
