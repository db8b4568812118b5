"""Training GaussianToken tokenizers (and their VQ baselines) from WebDataset shards.

`train(TrainConfig(...), run_dir)` is what `gtok train` runs; see `gtok.train.loop` for the
step order, `gtok.train.rundir` for what a run directory holds and `gtok.train.session`
for the training state.
"""

from gtok.train.config import TrainConfig
from gtok.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
