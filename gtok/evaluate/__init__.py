"""Scoring tokenizers by the standard reconstruction protocol: what `gtok eval` runs.

`evaluate_model` (reconstruct and score), `evaluate_pairs` (score saved reconstructions or a
token store against reference shards, matched by key), `write_report` (index.html: a page with
the metrics, a labelled grid of the best, median and worst images and plots; metrics.json,
per-image CSV). The metric definitions are in `gtok.metrics`; the protocol each result
records is `PROTOCOL` plus the preprocessing and weights hashes.
"""

from gtok.evaluate.nets import METRIC_NAMES, MetricNets, load_metric_nets, unavailable_notes
from gtok.evaluate.report import write_report
from gtok.evaluate.run import PROTOCOL, EvalResult, evaluate_model, evaluate_pairs
from gtok.evaluate.scores import Scorer

__all__ = [
    "METRIC_NAMES",
    "PROTOCOL",
    "EvalResult",
    "MetricNets",
    "Scorer",
    "evaluate_model",
    "evaluate_pairs",
    "load_metric_nets",
    "unavailable_notes",
    "write_report",
]
