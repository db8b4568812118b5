"""VectorQuantizer on toy data, checked against hand computations."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gtok.model.quantizer import VectorQuantizer, kmeans, rotation_trick

CENTRES = torch.tensor([[4.0, 0.0, 0.0], [-4.0, 0.0, 0.0], [0.0, 4.0, 4.0], [0.0, -4.0, 4.0]])


def clustered(n_per_cluster: int, noise: float = 0.05) -> torch.Tensor:
    """[4 * n, 3] points around CENTRES, cluster-major order."""
    pts = CENTRES.repeat_interleave(n_per_cluster, dim=0)
    return pts + noise * torch.randn_like(pts)


def with_codebook(vq: VectorQuantizer, embed: torch.Tensor, cluster_size: torch.Tensor) -> None:
    """Skip k-means: install a codebook and consistent EMA state."""
    vq.embed.copy_(embed)
    vq.cluster_size.copy_(cluster_size)
    vq.embed_avg.copy_(embed * cluster_size[:, None])
    vq.initted.fill_(1.0)


def test_kmeans_finds_obvious_clusters():
    torch.manual_seed(0)
    data = clustered(64)
    means, counts = kmeans(data, num_clusters=16, num_iters=10)
    dist_to_centres = torch.cdist(means, CENTRES)  # [16, 4]; clusters are >= 5.6 apart
    assert dist_to_centres.min(dim=1).values.max() < 0.5  # every code sits on a cluster
    assert dist_to_centres.min(dim=0).values.max() < 0.5  # every cluster has a code
    nearest = torch.cdist(data, means).argmin(dim=1)
    assert torch.equal(counts, torch.bincount(nearest, minlength=16).float())
    # run to convergence: each used code is then the mean of the points nearest to it
    means, counts = kmeans(data, num_clusters=16, num_iters=200)
    nearest = torch.cdist(data, means).argmin(dim=1)
    for k in range(16):
        if counts[k] > 0:
            torch.testing.assert_close(means[k], data[nearest == k].mean(dim=0))


def test_first_training_batch_initializes_with_kmeans():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=16, dim=3)
    data = clustered(64)
    vq.eval()
    vq(data[None])
    assert vq.initted.item() == 0.0 and torch.count_nonzero(vq.embed) == 0  # eval: no init
    vq.train()
    out = vq(data[None])
    assert vq.initted.item() == 1.0
    # each vector is quantized onto its own cluster's centre
    nearest_centre = CENTRES[torch.cdist(data, CENTRES).argmin(dim=1)]
    assert (out.quantized[0] - nearest_centre).norm(dim=1).max() < 0.5
    assert (torch.cdist(vq.embed, CENTRES).min(dim=1).values < 0.5).all()


def test_ema_update_matches_hand_computation():
    decay, eps = 0.8, 1e-5
    vq = VectorQuantizer(codebook_size=4, dim=2, decay=decay, eps=eps, dead_threshold=0.0)
    embed = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    size = torch.tensor([3.0, 1.0, 0.5, 2.0])
    with_codebook(vq, embed, size)
    avg = embed * size[:, None]
    x = torch.tensor([[0.1, 0.1], [0.9, 0.2], [1.2, -0.1], [0.2, 0.8], [0.05, -0.1]])
    vq.train()
    out = vq(x[None])

    # by hand, one vector at a time
    assign = [min(range(4), key=lambda k, v=v: ((v - embed[k]) ** 2).sum().item()) for v in x]
    assert assign == [0, 1, 1, 2, 0]
    counts = torch.zeros(4, dtype=torch.float64)
    sums = torch.zeros(4, 2, dtype=torch.float64)
    for v, k in zip(x.double(), assign, strict=True):
        counts[k] += 1
        sums[k] += v
    new_size = decay * size.double() + (1 - decay) * counts
    new_avg = decay * avg.double() + (1 - decay) * sums
    n = new_size.sum()
    smoothed = (new_size + eps) / (n + 4 * eps) * n
    want = new_avg / smoothed[:, None]

    assert out.indices.tolist() == [assign]
    torch.testing.assert_close(vq.cluster_size.double(), new_size)
    torch.testing.assert_close(vq.embed_avg.double(), new_avg)
    torch.testing.assert_close(vq.embed.double(), want)
    # the output uses the codebook from before the update
    torch.testing.assert_close(out.quantized[0], embed[assign])
    commit = sum(((v - embed[k]) ** 2).sum().item() for v, k in zip(x, assign, strict=True))
    assert out.commit_loss.item() == pytest.approx(commit / x.numel(), rel=1e-6)


def test_dead_codes_are_restarted_from_the_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, dim=3, dead_threshold=2.0)
    embed = torch.cat([torch.zeros(2, 3), torch.full((6, 3), 100.0)])  # 6 codes far away
    with_codebook(vq, embed, torch.full((8,), 3.0))
    vq.train()
    x = 0.1 * torch.randn(1, 32, 3)
    vq(x)  # far codes: EMA size 0.8 * 3 = 2.4, still alive
    assert (vq.embed[2:] > 99.0).all()
    torch.testing.assert_close(vq.cluster_size[2:], torch.full((6,), 2.4))
    x2 = 0.1 * torch.randn(1, 32, 3)
    vq(x2)  # 0.8 * 2.4 = 1.92 < 2: restarted
    rows = x2[0]
    for code in vq.embed[2:]:
        assert (rows == code).all(dim=1).any(), "restarted code is not a batch vector"
    assert len({tuple(c.tolist()) for c in vq.embed[2:]}) == 6  # sampled without replacement
    torch.testing.assert_close(vq.cluster_size[2:], torch.full((6,), 2.0))
    torch.testing.assert_close(vq.embed_avg[2:], 2.0 * vq.embed[2:])
    assert (vq.cluster_size[:2] > 2.0).all()


def rodrigues(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """3x3 rotation about u x v taking unit vector u to unit vector v (float64)."""
    axis = torch.linalg.cross(u, v)
    axis = axis / axis.norm()
    angle = torch.arccos((u @ v).clamp(-1.0, 1.0))
    k = torch.tensor(
        [[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
        dtype=torch.float64,
    )
    return torch.eye(3, dtype=torch.float64) + angle.sin() * k + (1 - angle.cos()) * k @ k


def test_rotation_trick_gradient_matches_rodrigues():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=5, dim=3)
    with_codebook(vq, torch.randn(5, 3), torch.full((5,), 4.0))
    vq.eval()
    x = torch.randn(1, 6, 3, requires_grad=True)
    out = vq(x)
    codes = vq.embed[out.indices[0]]
    assert torch.equal(out.quantized[0], codes)  # forward value is exactly the code
    g = torch.randn(1, 6, 3)
    (out.quantized * g).sum().backward()
    for i in range(6):
        xi, qi, gi = x[0, i].detach().double(), codes[i].double(), g[0, i].double()
        u, v = xi / xi.norm(), qi / qi.norm()
        rot = rodrigues(u, v)
        torch.testing.assert_close(rot @ u, v)
        want = qi.norm() / xi.norm() * rot.T @ gi
        torch.testing.assert_close(x.grad[0, i].double(), want, rtol=1e-5, atol=1e-6)


def test_rotation_trick_in_2d_is_a_plane_rotation():
    x = torch.tensor([[2.0, 0.0]], requires_grad=True)
    q = torch.tensor([[0.0, 3.0]])  # 90 degrees counter-clockwise, lambda = 1.5
    out = rotation_trick(x, q)
    assert torch.equal(out, q)
    out.backward(torch.tensor([[1.0, 0.0]]))
    # R = [[0, -1], [1, 0]], grad = 1.5 * R^T g = 1.5 * (0, -1)
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, -1.5]]))


def test_lookup_reproduces_eval_output_and_stats():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, dim=3)
    vq.train()
    for _ in range(3):
        vq(clustered(16)[None])
    vq.eval()
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    x = torch.randn(2, 10, 3)
    out = vq(x)
    assert torch.equal(out.quantized, vq.lookup(out.indices))
    assert out.indices.dtype == torch.int64 and out.indices.shape == (2, 10)
    for k, v in vq.state_dict().items():
        assert torch.equal(v, state[k]), f"eval forward changed {k}"
    assert set(state) == {"embed", "embed_avg", "cluster_size", "initted"}
    with pytest.raises(ValueError, match="indices"):
        vq.lookup(torch.tensor([[8]]))


def test_usage_and_perplexity():
    vq = VectorQuantizer(codebook_size=8, dim=2)
    embed = torch.arange(16.0).view(8, 2)
    with_codebook(vq, embed, torch.full((8,), 4.0))
    vq.eval()
    x = embed[[0, 0, 0, 0, 3, 3, 5, 5]][None]  # code frequencies 1/2, 1/4, 1/4
    out = vq(x)
    assert out.usage.item() == pytest.approx(3 / 8)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert out.perplexity.item() == pytest.approx(math.exp(entropy), rel=1e-6)
    assert out.commit_loss.item() == 0.0


def test_fp32_under_autocast_and_bad_input():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=4, dim=3)
    vq.train()
    x = torch.randn(2, 8, 3, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = vq(x.bfloat16())
    assert out.quantized.dtype == torch.float32 and vq.embed.dtype == torch.float32
    (out.quantized.sum() + out.commit_loss).backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0
    with pytest.raises(ValueError, match="expected x"):
        vq(torch.randn(2, 8, 4))


# --- two processes, gloo ---------------------------------------------------------------


class CountingQuantizer(VectorQuantizer):
    """Records the k-means codebook and counts the dead codes seen by the restart step."""

    restarted = 0
    init_codes: torch.Tensor | None = None

    def _init_codebook(self, flat: torch.Tensor) -> None:
        super()._init_codebook(flat)
        self.init_codes = self.embed.clone()

    def _restart_dead_codes(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        if self.dead_threshold > 0:
            self.restarted += int((self.cluster_size < self.dead_threshold).sum())
        super()._restart_dead_codes(flat, counts)


def _sync_worker(rank: int, world: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=world)
    try:
        torch.manual_seed(1000 + rank)  # each rank draws different data and randomness
        vq = CountingQuantizer(codebook_size=16, dim=3)
        vq.train()
        vq(clustered(8)[None] + 20.0 * rank)  # k-means init: ranks hold far-apart data
        for _ in range(5):
            vq(0.1 * torch.randn(1, 24, 3))  # most codes go unused and die
        states = {k: v.clone() for k, v in vq.state_dict().items()}

        # one EMA step from a common codebook, each rank holding half of a known batch
        torch.manual_seed(7)
        full = torch.randn(2, 20, 3)
        ema = VectorQuantizer(codebook_size=6, dim=3, dead_threshold=0.0)
        with_codebook(ema, torch.randn(6, 3), torch.rand(6) * 4)
        ema.train()
        ema(full[rank : rank + 1])
        torch.save(
            {"states": states, "init": vq.init_codes, "restarted": vq.restarted, "ema": ema.embed},
            os.path.join(tmp, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.subprocess
def test_two_process_gloo_codebooks_stay_in_sync(tmp_path):
    mp.spawn(_sync_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["restarted"] > 0 and r0["restarted"] == r1["restarted"]
    for key, value in r0["states"].items():
        assert torch.equal(value, r1["states"][key]), f"{key} differs across ranks"
    assert r0["states"]["initted"].item() == 1.0
    # k-means saw both ranks' batches (rank 1's lie 20 units away): codes on both
    assert torch.equal(r0["init"], r1["init"])
    assert (r0["init"].norm(dim=1) < 10).sum() >= 4 and (r0["init"].norm(dim=1) > 10).sum() >= 4
    # the all-reduced EMA step equals one process seeing the whole batch
    torch.manual_seed(7)
    full = torch.randn(2, 20, 3)
    single = VectorQuantizer(codebook_size=6, dim=3, dead_threshold=0.0)
    with_codebook(single, torch.randn(6, 3), torch.rand(6) * 4)
    single.train()
    single(full.reshape(1, 40, 3))
    torch.testing.assert_close(r0["ema"], single.embed)
    assert torch.equal(r0["ema"], r1["ema"])
