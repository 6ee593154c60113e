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
  quick switch, seed, threads, figure size and fonts) and the tidy step every
  committed notebook goes through (kernelspec, no widget state).
- :mod:`encnet.teaching.assignment`: the 2-D soft-assignment drawings and the
  smoothing slider (notebook 01).
- :mod:`encnet.teaching.diagram`: EncNet's architecture drawn, each box named
  after the module that implements it (notebook 02).
- :mod:`encnet.teaching.gallery`: the image picker showing an image's gamma and
  SE probabilities (notebook 02).
- :mod:`encnet.teaching.sweep`: the alpha explorer and the training button of
  the SE-loss ablation (notebook 03).
- :mod:`encnet.teaching.receptive`: the effective receptive field, the input
  gradient of one pixel's logit (notebook 05).
- :mod:`encnet.teaching.scenes`: the scene and layout picker on the shipped
  models (notebook 05).

Every widget's drawing and callback live here, so that the tests can move a
control and check what changes; each notebook draws the widget's default view
as a static figure beside it.
"""
