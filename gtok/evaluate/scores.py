"""`Scorer`: accumulates every metric of one tokenizer over (original, reconstruction) pairs.

All image metrics see uint8 images, the reconstruction quantized as a saved PNG would be
(`gtok.metrics.to_uint8`), so scoring a model directly and scoring its saved reconstructions
give the same numbers:

- PSNR and SSIM per image (`gtok.metrics.psnr`, `ssim`), averaged over images;
- LPIPS-VGG / LPIPS-Alex per image on u / 127.5 - 1, averaged over images;
- rFID: Frechet distance between Gaussians fitted to the FID Inception pool features of the
  originals and of the reconstructions (pytorch-fid's protocol), from streaming statistics;
- codebook usage, entropy and perplexity of every token, and the Gaussian geometry
  statistics, when the reconstructions come with tokens.

Scorers of two tokenizers evaluated on the same images (`--compare`) share the originals'
Inception statistics: pass the first as `reference` to the second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gtok.evaluate.nets import LPIPS_MIN_SIZE, MetricNets
from gtok.metrics import (
    FEATURE_DIM,
    FeatureStats,
    code_counts,
    codebook_stats,
    frechet_distance,
    geometry_stats,
    psnr,
    ssim,
)

__all__ = ["NO_TOKENS", "Scorer"]

NO_TOKENS = (
    "needs tokens: evaluate with --model, or give --reconstructed a token store instead of images"
)


class Scorer:
    """Per-image and dataset metrics of one tokenizer (see the module doc).

    nets: the metric networks (shared between scorers); codebook_size: K of the tokenizer, or
    None when reconstructions come without tokens; has_geometry: tokens carry Gaussians;
    reference: another scorer over the same originals whose Inception statistics to reuse;
    device: where the metric networks run.
    """

    def __init__(
        self,
        nets: MetricNets,
        *,
        codebook_size: int | None,
        has_geometry: bool,
        reference: Scorer | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.nets = nets
        self.device = torch.device(device)
        self.codebook_size = codebook_size
        self.has_geometry = has_geometry
        self.keys: list[str] = []
        self.per_image: dict[str, list[float]] = {"psnr": [], "ssim": []}
        self.per_image.update({name: [] for name in nets.lpips})
        self.unavailable = dict(nets.unavailable)
        self._reference = reference
        self._real: FeatureStats = (
            reference._real if reference is not None else FeatureStats(FEATURE_DIM)
        )
        self._fake = FeatureStats(FEATURE_DIM)
        self._counts = np.zeros(codebook_size or 1, np.int64)
        self._geometry: list[np.ndarray] = []

    @property
    def n(self) -> int:
        return len(self.keys)

    @torch.inference_mode()
    def add(
        self,
        keys: Sequence[str],
        originals: torch.Tensor,
        reconstructions: torch.Tensor,
        indices: torch.Tensor | None = None,
        geometry: torch.Tensor | None = None,
    ) -> None:
        """Score a batch.

        originals, reconstructions: uint8 [B, 3, S, S]; indices: [B, G] code ids and
        geometry: [B, G, 5] of the reconstructions' tokens, when there are tokens.
        """
        if len(keys) != len(originals) or originals.shape != reconstructions.shape:
            raise ValueError(
                f"{len(keys)} keys, originals {list(originals.shape)}, reconstructions "
                f"{list(reconstructions.shape)}: expected one key per image and equal shapes"
            )
        if not keys:
            return
        self.keys.extend(keys)
        self.per_image["psnr"] += psnr(originals, reconstructions).tolist()
        self.per_image["ssim"] += ssim(originals, reconstructions).tolist()
        x = originals.to(self.device)
        y = reconstructions.to(self.device)
        for name, model in self.nets.lpips.items():
            if name in self.unavailable:
                continue
            if min(x.shape[-2:]) < LPIPS_MIN_SIZE[name]:
                self.unavailable[name] = (
                    f"needs images of at least {LPIPS_MIN_SIZE[name]} px, these are "
                    f"{x.shape[-1]} px"
                )
                continue
            distance = model(x.float() / 127.5 - 1, y.float() / 127.5 - 1)
            self.per_image[name] += distance.double().cpu().tolist()
        if self.nets.inception is not None:
            if self._reference is None:
                self._real.update(self.nets.inception(x))
            self._fake.update(self.nets.inception(y))
        if indices is not None and self.codebook_size is not None:
            self._counts += code_counts(indices, self.codebook_size)
        if geometry is not None and self.has_geometry:
            self._geometry.append(geometry.float().cpu().numpy())

    def latest(self, count: int) -> list[dict[str, float]]:
        """The per-image metrics ({"psnr", "ssim", ...}) of the last `count` images scored."""
        start = self.n - count
        complete = {m: v for m, v in self.per_image.items() if len(v) == self.n}
        return [{m: v[i] for m, v in complete.items()} for i in range(start, self.n)]

    def code_histogram(self) -> np.ndarray | None:
        """int64 [K]: how many tokens used each code, or None without tokens."""
        if self.codebook_size is None or self._counts.sum() == 0:
            return None
        return self._counts.copy()

    def geometry(self) -> np.ndarray | None:
        """float32 [N, G, 5]: every scored image's token geometry, or None without Gaussians."""
        if not self.has_geometry or not self._geometry:
            return None
        self._geometry = [np.concatenate(self._geometry)]  # concatenated once, kept so
        return self._geometry[0]

    def rows(self) -> list[dict]:
        """Per scored image: {"key", "psnr", "ssim", "lpips_vgg", "lpips_alex"} (the LPIPS
        values when computed for every image)."""
        return [{"key": k, **m} for k, m in zip(self.keys, self.latest(self.n), strict=True)]

    def result(self) -> dict:
        """{"n", "psnr", "ssim", "lpips_vgg", "lpips_alex", "rfid", "codebook", "geometry",
        "unavailable"}: each metric present when it could be computed, else its reason is
        in "unavailable"."""
        out: dict = {"n": self.n}
        unavailable = dict(self.unavailable)
        for name, values in self.per_image.items():
            if name not in unavailable:
                out[name] = float(np.mean(values)) if values else None
        if self.nets.inception is not None:
            if min(self._real.n, self._fake.n) >= 2:
                out["rfid"] = frechet_distance(*self._real.mean_cov(), *self._fake.mean_cov())
            else:
                unavailable["rfid"] = f"needs at least 2 images, got {self.n}"
        if self.codebook_size is None:
            unavailable["codebook"] = NO_TOKENS
        elif self._counts.sum() > 0:
            out["codebook"] = codebook_stats(self._counts).to_dict()
        if not self.has_geometry:
            unavailable["geometry"] = (
                NO_TOKENS if self.codebook_size is None else "the tokenizer has no Gaussians"
            )
        elif (geometry := self.geometry()) is not None:
            try:
                out["geometry"] = geometry_stats(geometry).to_dict()
            except ValueError as exc:  # non-finite or non-positive values from the tokenizer
                unavailable["geometry"] = f"the tokens' geometry cannot be summarized: {exc}"
        out["unavailable"] = unavailable
        return out
