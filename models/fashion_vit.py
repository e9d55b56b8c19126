"""A small vision transformer for Fashion-MNIST, written out the way timm's ViT / DeiT are.

``vit_p4``: 4x4 patches (a 7x7 grid, 49 tokens) embedded by a strided Conv, a learned position
embedding, 4 pre-norm blocks of width 64 with 4 heads of 16 and an MLP of 128 (GELU), a final
LayerNorm, mean pooling over tokens, a linear head; about 0.14 M parameters. Attention is
spelled out (q @ kT * scale, Softmax, @ v), with a fused qkv projection as in timm; `fused=False`
gives separate q / k / v projections (Hugging Face style). Both forms are what onnxprune's
attention analysis reads (`rules/reshape.py`): the units are whole heads and MLP channels.
"""
from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool = True) -> None:
        super().__init__()
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.scale = self.head_dim ** -0.5
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, c = x.shape
        if self.fused:
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return qkv.unbind(0)
        return tuple(p(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
                     for p in (self.q, self.k, self.v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._split(x)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, fused: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, image: int = 28, patch: int = 4, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp: int = 128, fused: bool = True,
                 channels: int = 1) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp, fused) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))
