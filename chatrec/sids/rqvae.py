"""RQ-VAE (TIGER-style): an MLP autoencoder whose latent is quantized by a residual quantizer.

Codebooks are initialised by residual k-means on the initial latents, trained with the
straight-through estimator plus codebook and commitment losses, and codes unused for 25 steps
(or an epoch, when shorter) are re-seeded from live residuals. Weights are kept as plain numpy
arrays (saved in `sids/codebooks.npz`), so assigning new items needs no pickle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from chatrec.deps import require
from chatrec.sids.config import SidConfig
from chatrec.sids.rqkmeans import fit_rqkmeans

_RESTART_WINDOW = 25  # steps between dead-code checks (or one epoch, when shorter)


def _build(in_dim: int, hidden: tuple[int, ...], latent: int, levels: int, k: int) -> Any:
    import torch
    from torch import nn

    def mlp(sizes: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class RQVAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = mlp([in_dim, *hidden, latent])
            self.decoder = mlp([latent, *reversed(hidden), in_dim])
            self.codebooks = nn.Parameter(torch.zeros(levels, k, latent))  # [L, K, latent]

        def quantize(self, z: torch.Tensor, beta: float = 0.25
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
            """Straight-through quantized latent, codes [B, L], codebook+commitment loss, residuals."""
            residual = z
            quantized = torch.zeros_like(z)
            codes, residuals = [], []
            loss = z.new_zeros(())
            for level in range(levels):
                book = self.codebooks[level]                                 # [K, latent]
                dist = (residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ book.T
                        + book.pow(2).sum(-1))                              # [B, K]
                idx = dist.argmin(-1)                                        # [B]
                chosen = book[idx]                                           # [B, latent]
                loss = loss + (chosen - residual.detach()).pow(2).mean() \
                    + beta * (residual - chosen.detach()).pow(2).mean()
                residuals.append(residual.detach())
                quantized = quantized + chosen
                residual = residual - chosen.detach()
                codes.append(idx)
            z_q = z + (quantized - z).detach()                               # straight-through
            return z_q, torch.stack(codes, -1), loss, residuals

    return RQVAE()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads (0: unchanged), restoring the previous setting."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_rqvae(x: np.ndarray, config: SidConfig, codebook_size: int) -> dict[str, np.ndarray]:
    """Train on `x` `[N, dim]`; returns the model state as numpy arrays (`rqvae.*` keys)."""
    require("torch", "RQ-VAE semantic IDs")
    with _torch_threads(config.rqvae_threads):
        return _fit_rqvae(x, config, codebook_size)


def _fit_rqvae(x: np.ndarray, config: SidConfig, codebook_size: int) -> dict[str, np.ndarray]:
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))        # [N, dim]
    n, dim = data.shape
    model = _build(dim, config.rqvae_hidden, config.rqvae_latent_dim, config.levels, codebook_size)
    with torch.no_grad():  # k-means init of the codebooks on the initial latents
        latents = model.encoder(data).numpy()
        books = fit_rqkmeans(latents, config.levels, codebook_size, seed=config.seed,
                             iters=config.kmeans_iters)
        model.codebooks.copy_(torch.from_numpy(books))
    opt = torch.optim.Adam(model.parameters(), lr=config.rqvae_lr)
    steps_per_epoch = -(-n // config.rqvae_batch_size)
    total_steps = steps_per_epoch * config.rqvae_epochs
    window = min(steps_per_epoch, _RESTART_WINDOW)  # dead-code check every `window` steps
    used = torch.zeros(config.levels, codebook_size, dtype=torch.bool)
    step = 0
    bar = tqdm(range(config.rqvae_epochs), desc="rq-vae epochs", disable=not config.progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, config.rqvae_batch_size):
            batch = data[perm[start:start + config.rqvae_batch_size]]            # [B, dim]
            z = model.encoder(batch)
            z_q, codes, q_loss, residuals = model.quantize(z, config.rqvae_beta)
            recon = model.decoder(z_q)
            loss = (recon - batch).pow(2).sum(-1).mean() + q_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
            for level in range(config.levels):
                used[level, codes[:, level]] = True
            step += 1
            if step % window == 0 and step < total_steps:
                _restart_dead_codes(model, used, residuals, gen)
                used.zero_()
        bar.set_postfix(loss=f"{total / n:.4f}")
    return {f"rqvae.{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _restart_dead_codes(model: Any, used: Any, residuals: list[Any], gen: Any) -> None:
    """Re-seed codes unused since the last check with live residuals of the latest batch."""
    import torch

    with torch.no_grad():
        for level, pool in enumerate(residuals):
            dead = torch.nonzero(~used[level]).flatten()
            if len(dead) and len(pool):
                pick = torch.randint(len(pool), (len(dead),), generator=gen)
                model.codebooks[level, dead] = pool[pick]


def rqvae_encode(x: np.ndarray, state: dict[str, np.ndarray], config: SidConfig,
                 batch: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Codes `[N, levels]` and decoded reconstructions `[N, dim]` with a trained state."""
    require("torch", "RQ-VAE semantic IDs")
    import torch

    books = state["rqvae.codebooks"]
    levels, k, latent = books.shape
    dim = state["rqvae.encoder.0.weight"].shape[1]
    model = _build(dim, config.rqvae_hidden, latent, levels, k)
    model.load_state_dict({key.removeprefix("rqvae."): torch.from_numpy(np.asarray(v))
                           for key, v in state.items() if key.startswith("rqvae.")})
    model.eval()
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    codes, recons = [], []
    with torch.no_grad(), _torch_threads(config.rqvae_threads):
        for start in range(0, len(data), batch):
            z_q, c, _, _ = model.quantize(model.encoder(data[start:start + batch]))
            codes.append(c.numpy())
            recons.append(model.decoder(z_q).numpy())
    return np.concatenate(codes).astype(np.int64), np.concatenate(recons)
