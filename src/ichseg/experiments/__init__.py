"""Orchestration: the experiments that train, cross-validate, assemble, release, stress and
time the model. They sit above the engines (``evaluate``, ``infer``, ``train``) and below the
command line; nothing below imports them.

Inside, imports point one way: ``workflow`` (one run: index → preprocess → train → bundle)
← ``folds`` (one fold's training; fold JSONs: loading, tables, fingerprints) ← ``crossval``
(two-stage folds) and ``ensemble`` (fold-ensemble members and their pooled summary) ←
``assemble`` (a bundle at the pooled point) ← ``single`` (one network on every patient) and
``release`` (the shipped bundle) ← ``stress`` and ``bench``.
"""
