"""A timm-style Vision Transformer written here, mirroring timm 0.9's `VisionTransformer` where vlaprune looks
(OpenVLA / OpenVLA-OFT's DINOv2 and SigLIP towers are timm models; timm is not a dependency).

Mirrored: `patch_embed.proj` (Conv2d), `cls_token`, `pos_embed`, `blocks` as an `nn.Sequential` of `Block`
(norm1 -> attn with a *fused* `qkv` Linear (rows: all q, then all k, then all v) and `proj`; ls1 -> norm2 ->
mlp `fc1` / `act` / `fc2`; ls2), `norm`, and `get_intermediate_layers(x, n)` with timm's semantics: `n` an
int takes the last n blocks, a set / list takes those block indices; every block still runs.
Prismatic (OpenVLA) binds `forward = partial(get_intermediate_layers, n={depth - 2})`, so the last block is
computed but unused.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """timm's Attention: one fused qkv projection, `num_heads` heads of `head_dim`, output `proj`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * num_heads * self.head_dim, bias=qkv_bias)
        self.proj = nn.Linear(num_heads * self.head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(x))) (DINOv2 uses LayerScale, SigLIP Identity)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layer_scale: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.img_size, self.patch_size = (img_size, img_size), (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm-shaped ViT. `no_embed_class`-free layout: cls token (optional) + positional embedding.
    Built from keyword arguments only (as OFT's Prismatic code calls timm's `VisionTransformer(**kwargs)`)."""

    def __init__(
        self,
        *,
        img_size: int = 32,
        patch_size: int = 8,
        embed_dim: int = 32,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        class_token: bool = True,
        layer_scale: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02) if class_token else None
        n = self.patch_embed.num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.randn(1, n, embed_dim) * 0.02)
        self.blocks = nn.Sequential(
            *(Block(embed_dim, num_heads, mlp_ratio, layer_scale) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def get_intermediate_layers(
        self, x: torch.Tensor, n: int | set[int] | list[int] = 1, norm: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Outputs of the chosen blocks (prefix tokens removed), as timm 0.9: int n = the last n blocks,
        a collection = those indices. (batch, num_patches, embed_dim) each."""
        take = set(range(len(self.blocks) - n, len(self.blocks))) if isinstance(n, int) else set(n)
        x, outs = self._embed(x), []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in take:
                outs.append(x)
        outs = [self.norm(o) if norm else o for o in outs]
        return tuple(o[:, self.num_prefix_tokens :] for o in outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self._embed(x)))
