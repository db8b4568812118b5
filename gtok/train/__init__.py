"""Training GaussianToken tokenizers (and their VQ baselines) from WebDataset shards.

`train(TrainConfig(...), run_dir)` is what `gtok train` runs; see `gtok.train.loop` for the
step order, `gtok.train.rundir` for what a run directory holds and `gtok.train.session`
for the training state. The names are imported on first use, so that the CLI reads the
settings' choices (`gtok.train.config`, `gtok.train.recipe`) without importing torch.
"""

from gtok._lazy import lazy_names

__all__ = ["TrainConfig", "TrainResult", "train"]

_HOMES = {
    "TrainConfig": "gtok.train.config",
    "TrainResult": "gtok.train.loop",
    "train": "gtok.train.loop",
}

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
