"""A small autoregressive prior (a GPT in plain PyTorch) trained on a gtok token store.

It shows how a sequence model consumes gtok tokens: `TokenStore.sequences()` turns each
image into one flat stream of ids (code id, then the five geometry bins, per Gaussian; with
`gtok encode --layout codebook` the code id, then one geometry id; a VQ store gives code
ids only), `TokenStore.vocabulary` documents which id range each position holds, and
`TokenStore.from_sequences()` turns sampled ids back into `Tokens` that the store's model
decodes to pixels.

    gtok encode 'corpus/train-*.tar' -o train.zarr --geometry-bits 8
    gtok encode corpus/val-000000.tar -o val.zarr --geometry-bits 8
    python examples/ar_prior.py train.zarr --val-store val.zarr --minutes 25 -o prior/
    python examples/ar_prior.py train.zarr --smoke -o /tmp/prior   # about a minute

    # 2 ids per Gaussian instead of 6 (docs/results.md, "Token layouts for generation")
    gtok fit-codebook train.zarr -o codebook.npz
    gtok encode 'corpus/train-*.tar' -o train-cb.zarr --layout codebook \
        --geometry-codebook codebook.npz   # likewise val-cb.zarr

Every position's logits are restricted to its field's id range (the layout is known, so
the model never spends probability on an impossible id), and get a learned per-position
bias that starts at the per-position unigram (`--no-position-prior`: at zero). Reports
validation bits per token of the GPT against three baselines estimated on the training
rows (add-one smoothed): a unigram over the whole vocabulary, a unigram per field, and a
unigram per position (the strongest: it knows e.g. where Gaussian 17 usually sits). Writes
`OUT/samples.png` (sampled images, then a row of decoded validation tokens for
reference), `OUT/results.json` (the numbers, with the bits per image each field costs: code
ids against geometry, to compare a GaussianToken store with a VQ store) and `OUT/prior.pt`
(the GPT's weights).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gtok.store import TokenStore

LN2 = math.log(2.0)


# -- the model --------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    vocab: int  # ids of the store's vocabulary (a start id `vocab` is added)
    length: int  # ids per image
    dim: int = 192
    layers: int = 4
    heads: int = 4


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention (with a KV cache) + MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        """x [B, T, D]; with `cache` ([] or [k, v] of earlier positions) x continues it."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        causal = cache is None or k.shape[2] == t
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and t > 1)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """ids [B, T] -> next-id logits [B, T, vocab], each restricted to its field's range."""

    def __init__(self, config: GPTConfig, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab + 1, config.dim)  # + the start id
        self.position = nn.Parameter(torch.zeros(config.length, config.dim))
        self.blocks = nn.ModuleList(Block(config.dim, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab)
        # per-position log-prior added to the logits (`--position-prior` starts it at the
        # per-position unigram, so the transformer only has to learn what the context adds)
        self.prior = nn.Parameter(torch.zeros(config.length, config.vocab))
        ids = torch.arange(config.vocab)
        allowed = (ids >= torch.from_numpy(low)[:, None]) & (ids < torch.from_numpy(high)[:, None])
        self.register_buffer("mask", torch.where(allowed, 0.0, -math.inf), persistent=False)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, ids: torch.Tensor, start: int = 0, caches: list | None = None):
        """ids [B, T] at positions start..start+T-1 (the input is shifted: position p sees
        the start id and ids 0..p-1) -> logits [B, T, vocab] for ids start..start+T-1."""
        x = self.embed(ids) + self.position[start : start + ids.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        where = slice(start, start + ids.shape[1])
        return self.head(self.norm(x)) + self.prior[where] + self.mask[where]

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """Targets [B, L] -> inputs [B, L]: the start id, then the targets shifted by one."""
        begin = torch.full_like(ids[:, :1], self.config.vocab)
        return torch.cat([begin, ids[:, :-1]], 1)

    def loss(self, ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Next-id cross entropy in nats: the mean, or per id [B, L] (reduction "none")."""
        logits = self(self.inputs(ids))
        loss = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction=reduction)
        return loss if reduction == "mean" else loss.view(ids.shape)

    @torch.no_grad()
    def sample(self, n: int, temperature: float, top_k: int, generator) -> torch.Tensor:
        """n sequences [n, L], sampled one id at a time (with a KV cache)."""
        caches: list = [[] for _ in self.blocks]
        token = torch.full((n, 1), self.config.vocab, dtype=torch.long)
        out = []
        for p in range(self.config.length):
            logits = self(token, start=p, caches=caches)[:, -1] / max(temperature, 1e-6)
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -math.inf)
            token = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            out.append(token)
        return torch.cat(out, 1)


# -- baselines --------------------------------------------------------------------------------


def position_log_prior(train: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """float32 [L, vocab]: log-probabilities of the add-one-smoothed unigram of each position
    over its field's ids (0 outside the field)."""
    out = np.zeros((train.shape[1], int(high.max())), np.float32)
    for p in range(train.shape[1]):
        counts = np.bincount(train[:, p] - low[p], minlength=high[p] - low[p]) + 1.0
        out[p, low[p] : high[p]] = np.log(counts / counts.sum())
    return out


def position_unigram_bits(prior: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Mean bits of the per-position unigram `prior` ([L, vocab] log-probabilities) at each
    position of `val` [n, L]: float64 [L]."""
    return -prior[np.arange(val.shape[1]), val].astype(np.float64).mean(0) / LN2


def unigram_bits(
    train: np.ndarray, val: np.ndarray, low: np.ndarray, high: np.ndarray, prior: np.ndarray
) -> dict:
    """Validation bits per id of three add-one-smoothed unigrams estimated on `train`
    (`prior`: the per-position one, `position_log_prior(train, low, high)`)."""
    vocab = int(high.max())
    counts = np.bincount(train.ravel(), minlength=vocab) + 1.0
    whole = -np.log2(counts / counts.sum())[val].mean()
    per_field = np.empty(vocab)
    for a, b in np.unique(np.stack([low, high], 1), axis=0):
        per_field[a:b] = -np.log2(counts[a:b] / counts[a:b].sum())
    return {
        "unigram": float(whole),
        "unigram_per_field": float(per_field[val].mean()),
        "unigram_per_position": float(position_unigram_bits(prior, val).mean()),
    }


# -- training ---------------------------------------------------------------------------------


def position_bits(model: GPT, ids: torch.Tensor, batch: int) -> np.ndarray:
    """Mean bits of `model` at each position of `ids` [n, L]: float64 [L]."""
    model.eval()
    total = torch.zeros(ids.shape[1], dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            total += model.loss(ids[i : i + batch], reduction="none").double().sum(0)
    model.train()
    return (total / len(ids) / LN2).numpy()


def evaluate(model: GPT, ids: torch.Tensor, batch: int) -> float:
    """Mean bits per id of `model` on `ids` [n, L]."""
    return float(position_bits(model, ids, batch).mean())


def bits_per_field(per_position: np.ndarray, vocabulary) -> dict[str, float]:
    """Bits per image spent on each field (code id, each geometry parameter): the sum of
    `per_position` [L] over the positions that hold the field."""
    names = [name for name, _, _ in vocabulary.fields]
    field = np.arange(len(per_position)) % len(names)
    return {name: float(per_position[field == i].sum()) for i, name in enumerate(names)}


def train(model: GPT, data: torch.Tensor, val: torch.Tensor, args, log) -> dict:
    """AdamW with warm-up and cosine decay, for `args.steps` steps or `args.minutes`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    started, step, curve = time.perf_counter(), 0, []
    budget = args.minutes * 60.0
    while step < args.steps and time.perf_counter() - started < budget:
        progress = max(step / args.steps, (time.perf_counter() - started) / budget)
        warm = min(1.0, (step + 1) / args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        rows = torch.randint(len(data), (args.batch_size,), generator=generator)
        loss = model.loss(data[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % args.eval_every == 0:
            bits = evaluate(model, val[: args.batch_size * 4], args.batch_size)
            curve.append({"step": step, "seconds": time.perf_counter() - started, "val": bits})
            log(f"step {step}: train {loss.item() / LN2:.3f} val {bits:.3f} bits/id")
    return {"steps": step, "seconds": time.perf_counter() - started, "curve": curve}


# -- images -----------------------------------------------------------------------------------


def decode_grid(store: TokenStore, rows: list[torch.Tensor], model_dir: str | None) -> np.ndarray:
    """Rows of sequences [n_i, L] -> one uint8 picture [H, W, 3] (one image row each)."""
    import gtok
    from gtok.decode.pictures import uint8_images

    tokenizer = gtok.load_tokenizer(model_dir or store.model_path).eval()
    lines = []
    width = max(len(r) for r in rows)
    for ids in rows:
        images = uint8_images(tokenizer.decode(store.from_sequences(ids)))  # [n, 3, S, S]
        pad = torch.full((width - len(images), *images.shape[1:]), 255, dtype=torch.uint8)
        line = torch.cat([images, pad]).permute(2, 0, 3, 1)  # [S, n, S, 3]
        lines.append(line.reshape(line.shape[0], -1, 3).numpy())
        lines.append(np.full((2, lines[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(lines[:-1])


# -- the command ------------------------------------------------------------------------------


def _split(args, store: TokenStore) -> tuple[np.ndarray, np.ndarray]:
    data = store.sequences()
    if args.val_store:
        val_store = TokenStore(args.val_store)
        layout = (store.vocabulary, store.num_tokens, store.layout, store.header.geometry_codebook)
        if layout != (
            val_store.vocabulary,
            val_store.num_tokens,
            val_store.layout,
            val_store.header.geometry_codebook,
        ):
            raise SystemExit("error: the validation store's token layout differs from training's")
        return data, val_store.sequences()[: args.val_rows]
    order = np.random.default_rng(args.seed).permutation(len(data))
    held = max(1, int(len(data) * args.val_fraction))
    return data[order[held:]], data[order[:held]][: args.val_rows]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="token store to train on (--geometry-bits, or VQ)")
    parser.add_argument("--val-store", help="validation store (default: hold out rows)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--val-rows", type=int, default=1024, help="validation rows used")
    parser.add_argument("-o", "--out", default="ar_prior")
    parser.add_argument("--model", help="model directory to decode with (default: the store's)")
    parser.add_argument("--minutes", type=float, default=25.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0: sample from every id")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--position-prior",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the logits' per-position bias at the per-position unigram",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny GPT, a few steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.dim, args.layers, args.heads, args.steps, args.warmup = 32, 1, 2, 30, 5
        args.eval_every, args.samples, args.val_rows, args.batch_size = 10, 4, 32, 8
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, flush=True)

    store = TokenStore(args.store)
    vocabulary = store.vocabulary
    data, val = _split(args, store)
    low, high = vocabulary.position_ranges(data.shape[1])
    config = GPTConfig(vocabulary.size, data.shape[1], args.dim, args.layers, args.heads)
    model = GPT(config, low, high)
    prior = position_log_prior(data, low, high)
    if args.position_prior:
        with torch.no_grad():
            model.prior.copy_(torch.from_numpy(prior))
    params = sum(p.numel() for p in model.parameters())
    log(f"{len(data)} training and {len(val)} validation sequences of {data.shape[1]} ids "
        f"(vocabulary {vocabulary.size}); GPT of {params / 1e6:.2f} M parameters")  # fmt: skip
    baselines = unigram_bits(data, val, low, high, prior)
    run = train(model, torch.from_numpy(data), torch.from_numpy(val), args, log)
    per_position = position_bits(model, torch.from_numpy(val), 64)
    bits = float(per_position.mean())
    model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    sampled = model.sample(args.samples, args.temperature, args.top_k, generator)
    per_row = max(1, math.ceil(math.sqrt(args.samples)))
    rows = [sampled[i : i + per_row] for i in range(0, len(sampled), per_row)]
    rows.append(torch.from_numpy(val[:per_row]))
    from PIL import Image

    Image.fromarray(decode_grid(store, rows, args.model)).save(out / "samples.png")
    torch.save(model.state_dict(), out / "prior.pt")
    results = {
        "store": str(Path(args.store).resolve()),
        "val_store": args.val_store and str(Path(args.val_store).resolve()),
        "train_sequences": len(data),
        "val_sequences": len(val),
        "ids_per_sequence": data.shape[1],
        "vocabulary": vocabulary.to_dict(),
        "geometry_bins": store.attrs.get("geometry_bins"),
        "gpt": {**asdict(config), "parameters": params},
        "settings": {k: v for k, v in vars(args).items() if k not in ("store", "val_store")},
        "training": run,
        "val_bits_per_id": {"gpt": bits, **baselines},
        "val_bits_per_image": {
            "gpt": bits * data.shape[1],
            **{k: v * data.shape[1] for k, v in baselines.items()},
        },
        "val_bits_per_image_by_field": {
            "gpt": bits_per_field(per_position, vocabulary),
            "unigram_per_position": bits_per_field(position_unigram_bits(prior, val), vocabulary),
        },
        "samples_png": str(out / "samples.png"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(json.dumps(results["val_bits_per_id"]))
    return results


if __name__ == "__main__":
    main()
