"""``vit``: a vision transformer as a PCN, each transformer block one layer (docs/method.md §9).

Layer 1 embeds the image as tokens (``patch``×``patch`` patches by a strided convolution, plus a
learnt position embedding); layers 2..depth+1 are pre-norm transformer blocks
``x + MLP(LN(x + MHA(LN(x))))`` (Dosovitskiy et al. 2021: multi-head self-attention, a GELU MLP);
the last layer is the head: layer norm, the mean over the tokens and a linear map to the logits.
Every hidden layer has the identity activation — a block's output *is* its state — so the nudged
phase moves each token state to ``a_k + Δ_k``. No class token, no dropout. Linear weights and the
position embedding start from a normal distribution with std 0.02, biases at 0, layer norms at
(1, 0).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .models import PCN, from_blocks, register

__all__ = ["PatchEmbedding", "TransformerBlock", "Head", "vit"]


class PatchEmbedding(nn.Module):
    """``(N, C, S, S)`` images → ``(N, (S/p)², dim)`` tokens: a p×p stride-p convolution, plus a
    position embedding."""

    def __init__(self, in_channels: int, dim: int, patch: int, image_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)
        self.position = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2) + self.position


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and MLP, each with its residual connection, on ``(N, T, dim)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def attention(self, x):
        n, t, dim = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(n, t, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Head(nn.Module):
    """Layer norm, mean over the tokens, linear map to the logits: ``(N, T, dim)`` → ``(N, classes)``."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.linear(self.norm(x).mean(1))


def _init(net: nn.Module) -> None:
    for name, p in net.named_parameters():
        if name.endswith("position") or (p.dim() > 1 and "norm" not in name):
            nn.init.trunc_normal_(p, std=0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def vit(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, *, patch: int = 4,
        dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0) -> PCN:
    """A ViT of ``depth`` transformer blocks as ``depth + 2`` PCN layers (embedding, blocks,
    head), all hidden layers with the identity activation. ``image_size`` must be a multiple of
    ``patch`` and ``dim`` of ``heads``."""
    for what, v in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"vit {what} must be a positive integer, got {v!r}")
    if image_size % patch:
        raise ValueError(f"vit: image_size {image_size} must be a multiple of patch {patch}")
    if dim % heads:
        raise ValueError(f"vit: dim {dim} must be a multiple of heads {heads}")
    blocks = [PatchEmbedding(in_channels, dim, patch, image_size)]
    blocks += [TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)]
    blocks.append(Head(dim, num_classes))
    net = from_blocks(blocks, activations="identity",
                      in_shape=(in_channels, image_size, image_size), num_classes=num_classes,
                      name="vit")
    _init(net)
    return net


register("vit", vit, image_size=32, general=True)
