"""Vector quantizer of the Gaussians' features (docs/design.md section 1, step 4).

Euclidean nearest code in a [K, z] codebook, no projection and no normalization. The codebook
is not trained by gradients: it is an exponential moving average (decay 0.8) of the vectors
assigned to each code, with Laplace smoothing (eps 1e-5) of the cluster sizes, as in
vector-quantize-pytorch's `EuclideanCodebook`. In training mode only:

- the first batch initializes the codebook with k-means (10 iterations);
- every step updates the EMA, then restarts dead codes: a code whose EMA cluster size falls
  below 2 is replaced by a random vector of the batch (cluster size reset to 2). With
  `restart_used=False` (the small presets' training recipe, `gtok.train.recipe`) a code
  that this step's batch used is never restarted: when a batch holds about as many vectors
  as there are codes (batch 16 x 64 tokens = 1024), the mean EMA cluster size is 1, below
  the threshold of 2, and the authors' rule replaces every used code with a random batch
  vector at every step, so the codebook never settles.

Gradients reach the input through the rotation trick (Fifty et al. 2024, "Restructuring
Vector Quantization with the Rotation Trick", section 4.2), not plain straight-through: the
forward value is exactly the code q, and the gradient g of the code is carried back to the
input x as lambda * R^T g, with R the rotation taking x / |x| to q / |q| and
lambda = |q| / |x|, both treated as constants.

Under `torch.distributed` the training-mode forward is collective (every rank must call it):
the batch's cluster counts and sums are all-reduced before the EMA update, k-means runs on rank
0 over every rank's batch and is broadcast, and dead-code replacements are drawn on rank 0 and
broadcast, so all replicas keep bitwise-identical codebooks. Everything runs in fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["QuantizerOutput", "VectorQuantizer", "kmeans", "rotation_trick"]

_TINY = 1e-6  # floor of vector norms in the rotation trick


class QuantizerOutput(NamedTuple):
    """What `VectorQuantizer.forward` returns.

    quantized: [B, N, z] fp32, the codes' values; gradients reach the input (rotation trick).
    indices: [B, N] int64 code ids.
    commit_loss: scalar, MSE(x, sg(q)) (gradient to the input only).
    perplexity: scalar, exp(entropy) of this batch's (this rank's) code distribution.
    usage: scalar, fraction of the K codes used in this batch (this rank).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    commit_loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def _nearest(samples: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index [N] of the Euclidean nearest row of codes [K, z] for each row of samples [N, z]."""
    sq_dist = (
        samples.pow(2).sum(dim=1, keepdim=True)
        - 2.0 * samples @ codes.T
        + codes.pow(2).sum(dim=1)[None, :]
    )  # [N, K]
    return sq_dist.argmin(dim=1)


def _sample_rows(samples: torch.Tensor, num: int) -> torch.Tensor:
    """num random rows of samples [N, z]: without replacement when N >= num."""
    n = samples.shape[0]
    if n >= num:
        index = torch.randperm(n, device=samples.device)[:num]
    else:
        index = torch.randint(0, n, (num,), device=samples.device)
    return samples[index]


def kmeans(
    samples: torch.Tensor, num_clusters: int, num_iters: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means started from random samples; empty clusters keep their previous mean.

    Args:
        samples: [N, z] vectors.
        num_clusters: K.
        num_iters: Lloyd iterations.

    Returns:
        means [K, z] and counts [K] (float) of the samples nearest to each final mean.
    """
    means = _sample_rows(samples, num_clusters)
    for _ in range(num_iters):
        buckets = _nearest(samples, means)  # [N]
        counts = torch.bincount(buckets, minlength=num_clusters)  # [K]
        sums = torch.zeros_like(means).index_add_(0, buckets, samples)  # [K, z]
        new_means = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        means = torch.where((counts == 0)[:, None], means, new_means)
    counts = torch.bincount(_nearest(samples, means), minlength=num_clusters)
    return means, counts.to(samples.dtype)


def rotation_trick(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Return q's values with the rotation-trick gradient path to x.

    Args:
        x: [..., z] encoder outputs (the gradient flows here).
        q: [..., z] their codes (treated as constants).

    Returns:
        [..., z] equal to q bitwise; d/dx receives lambda * (g - 2 w (w.g) + 2 u (v.g)) for an
        upstream gradient g, with u = x/|x|, v = q/|q|, w = (u + v)/|u + v|, lambda = |q|/|x|.
    """
    q = q.detach()
    x_norm = x.norm(dim=-1, keepdim=True).clamp(min=_TINY)
    q_norm = q.norm(dim=-1, keepdim=True)
    u = (x / x_norm).detach()
    v = q / q_norm.clamp(min=_TINY)
    w = F.normalize(u + v, dim=-1)
    # R x = x - 2 w (w.x) + 2 v (u.x): the rotation in the (u, v) plane that takes u to v
    rotated = x - 2.0 * (x * w).sum(-1, keepdim=True) * w + 2.0 * (x * u).sum(-1, keepdim=True) * v
    rotated = rotated * (q_norm / x_norm).detach()
    return q + (rotated - rotated.detach())  # value q exactly, gradient of `rotated`


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _is_rank0() -> bool:
    return _world_size() == 1 or dist.get_rank() == 0


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of x [n_r, z] concatenated in rank order (n_r may differ per rank)."""
    world = _world_size()
    if world == 1:
        return x
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = x.new_zeros(max(counts), x.shape[1])
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, counts, strict=True)])


def _broadcast_from_rank0(x: torch.Tensor) -> torch.Tensor:
    if _world_size() > 1:
        dist.broadcast(x, src=0)
    return x


def _forget_initted(module: VectorQuantizer, incompatible_keys) -> None:
    """Load hook: the loaded `initted` buffer may say either; read it at the next step."""
    module._known_initted = False


class VectorQuantizer(nn.Module):
    """Euclidean VQ with an EMA codebook, k-means init and dead-code restarts.

    Args:
        codebook_size: K codes.
        dim: z, channels of a code.
        decay: EMA decay of cluster sizes and sums.
        eps: Laplace smoothing of the cluster sizes.
        kmeans_iters: k-means iterations of the first-training-batch initialization.
        dead_threshold: codes with EMA cluster size below this are restarted every training
            step (0 disables restarts); a restarted code gets this cluster size.
        restart_used: whether a code used in this step's batch (on any rank) may be
            restarted (True: the authors' rule).

    Buffers (all persistent): `embed` [K, z] the codebook, `embed_avg` [K, z] EMA of summed
    assigned vectors, `cluster_size` [K] EMA of assignment counts, `initted` [1] (1.0 once
    k-means has run; the host reads it once per process and after each load). Names and
    meanings follow vector-quantize-pytorch's `_codebook.*`.
    """

    embed: torch.Tensor
    embed_avg: torch.Tensor
    cluster_size: torch.Tensor
    initted: torch.Tensor

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        decay: float = 0.8,
        eps: float = 1e-5,
        kmeans_iters: int = 10,
        dead_threshold: float = 2.0,
        restart_used: bool = True,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be positive, got {codebook_size}, {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if eps <= 0.0 or kmeans_iters < 0 or dead_threshold < 0.0:
            raise ValueError(
                f"need eps > 0, kmeans_iters >= 0, dead_threshold >= 0; "
                f"got {eps}, {kmeans_iters}, {dead_threshold}"
            )
        self.codebook_size = codebook_size
        self.dim = dim
        self.decay = decay
        self.eps = eps
        self.kmeans_iters = kmeans_iters
        self.dead_threshold = dead_threshold
        self.restart_used = restart_used
        self.register_buffer("embed", torch.zeros(codebook_size, dim))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("initted", torch.zeros(1))
        # `initted` as a Python bool once known true, so a training step does not wait for
        # the GPU to read it; forgotten when a state dict is loaded (read again next step).
        self._known_initted = False
        self.register_load_state_dict_post_hook(_forget_initted)

    @property
    def codebook(self) -> torch.Tensor:
        """[K, z] the current codes."""
        return self.embed

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantize x [B, N, z]; in training mode also init/update/restart the codebook."""
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x [B, N, {self.dim}], got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(self.embed.dtype)  # fp32 unless the model was cast with `.to(dtype)`
            flat = x.detach().reshape(-1, self.dim)  # [B*N, z]
            if self.training and not self._known_initted:
                if not bool(self.initted.item()):
                    self._init_codebook(flat)
                self._known_initted = True
            indices = _nearest(flat, self.embed)  # [B*N]
            codes = self.embed[indices].view_as(x)  # a copy: later updates don't touch it
            counts = torch.bincount(indices, minlength=self.codebook_size).float()  # [K] local
            if self.training:
                total_counts = self._update_codebook(flat, indices, counts)
                self._restart_dead_codes(flat, total_counts)
            commit_loss = F.mse_loss(x, codes)
            if torch.is_grad_enabled() and x.requires_grad:
                quantized = rotation_trick(x, codes)
            else:
                quantized = codes
            probs = counts / counts.sum()
            perplexity = torch.exp(-torch.special.xlogy(probs, probs).sum())
            usage = (counts > 0).float().mean()
        return QuantizerOutput(quantized, indices.view(x.shape[:2]), commit_loss, perplexity, usage)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [B, N, z] (the codebook's dtype, fp32 unless the model was cast) of indices
        [B, N] (int) in [0, K)."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        if torch.compiler.is_compiling() or not indices.numel():  # a check would break graphs
            return F.embedding(indices.long(), self.embed)
        if int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size:
            raise ValueError(
                f"indices must be in [0, {self.codebook_size}), got range "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return F.embedding(indices.long(), self.embed)

    @torch.no_grad()
    def _init_codebook(self, flat: torch.Tensor) -> None:
        """k-means on every rank's batch (on rank 0), broadcast to all ranks."""
        data = _gather_rows(flat)  # [sum_r B_r*N, z]
        if _is_rank0():
            means, counts = kmeans(data, self.codebook_size, self.kmeans_iters)
        else:
            means, counts = torch.empty_like(self.embed), torch.empty_like(self.cluster_size)
        _broadcast_from_rank0(means)
        _broadcast_from_rank0(counts)
        self.embed.copy_(means)
        self.cluster_size.copy_(counts)
        self.embed_avg.copy_(means * counts[:, None])
        self.initted.fill_(1.0)

    @torch.no_grad()
    def _update_codebook(
        self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        """EMA of (all ranks') cluster counts and sums, then codes = smoothed averages.
        Returns all ranks' counts [K] of this step."""
        sums = torch.zeros_like(self.embed).index_add_(0, indices, flat)  # [K, z]
        stats = torch.cat([counts[:, None], sums], dim=1)  # [K, 1 + z]: one collective
        if _world_size() > 1:
            dist.all_reduce(stats)
        self.cluster_size.lerp_(stats[:, 0], 1.0 - self.decay)  # decay*old + (1-decay)*new
        self.embed_avg.lerp_(stats[:, 1:], 1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps)
        self.embed.copy_(self.embed_avg / (smoothed * total)[:, None])
        return stats[:, 0]

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        """Replace codes whose EMA cluster size < dead_threshold by random batch vectors
        (not those with this step's all-rank counts [K] > 0, unless `restart_used`)."""
        if self.dead_threshold <= 0.0:
            return
        dead = self.cluster_size < self.dead_threshold  # [K], identical on all ranks
        if not self.restart_used:
            dead &= counts == 0
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        rank0 = _is_rank0()
        fresh = _sample_rows(flat, num_dead) if rank0 else flat.new_empty(num_dead, self.dim)
        _broadcast_from_rank0(fresh)
        self.embed[dead] = fresh
        self.cluster_size[dead] = self.dead_threshold
        self.embed_avg[dead] = fresh * self.dead_threshold
