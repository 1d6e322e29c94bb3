"""Evaluation building blocks: leak-free splits (:mod:`feed.evaluation.splits`) and ranking
metrics (:mod:`feed.evaluation.metrics`). Models (the learned ranker's validation) and
:mod:`feed.evaluate` (the comparison table) both build on them."""
