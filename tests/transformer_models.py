"""Tiny transformer-era torch networks for the second conformance zoo.

The first zoo (tests/conformance_models.py) covers CNN-era operators at opsets 11-17
with the TorchScript exporter. This one covers what today's exports of attention
networks contain - LayerNormalization, Gelu, Einsum, GroupNormalization,
InstanceNormalization, LRN, ScatterND/ScatterElements, CumSum, Trilu, Where, Expand,
token Gather - exported with both torch exporters (TorchScript and dynamo) at opsets
17 and 18 (see tests/test_conformance_transformers.py).

Every entry: a seeded builder, an input maker (float images or int64 token ids), and
weights small enough that export, conversion and runs take milliseconds.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class TModel:
    name: str
    builder: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # batch first; the batch size is replaced by the tests
    tokens: int = 0  # > 0: int64 token ids in [0, tokens) instead of float data

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode()) & 0x7FFFFFFF


TZOO: dict[str, TModel] = {}


def _register(name, shape, tokens=0):
    def deco(builder):
        if name in TZOO:
            raise ValueError(f"duplicate model {name}")
        TZOO[name] = TModel(name, builder, tuple(shape), tokens)
        return builder

    return deco


def build(model: TModel) -> nn.Module:
    torch.manual_seed(model.seed)
    m = model.builder()
    # Non-trivial affine parameters everywhere (fresh norms are the identity).
    g = torch.Generator().manual_seed(model.seed + 1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)) and getattr(mod, "weight", None) is not None:
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.3)
    return m.eval()


def example_input(model: TModel, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(model.seed * 7 + batch * 131 + seed)
    shape = (batch,) + tuple(model.input_shape[1:])
    if model.tokens:
        x = torch.randint(0, model.tokens, shape, generator=g)
        x[:, -1] = 0  # a padding token at the end exercises the masks
        return x
    return torch.randn(*shape, generator=g)


# --------------------------------------------------------------------------
# attention building blocks
# --------------------------------------------------------------------------


class Mlp(nn.Module):
    def __init__(self, dim, hidden, approximate="none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.approximate = approximate

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Attention(nn.Module):
    """Hand-written multi-head self-attention (qkv Linear, scaled dot product, softmax)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


# --------------------------------------------------------------------------
# ViT
# --------------------------------------------------------------------------


class TinyViT(nn.Module):
    def __init__(self, dim=16, heads=2, patch=4, image=16, classes=5):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        n = (image // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.5)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x)[:, 0])


@_register("vit_tiny", (1, 3, 16, 16))
def _():
    return TinyViT()


# --------------------------------------------------------------------------
# Swin-style windowed attention with a shift and relative position bias
# --------------------------------------------------------------------------


class SwinBlock(nn.Module):
    def __init__(self, dim=16, heads=2, size=8, window=4, shift=2):
        super().__init__()
        self.dim, self.heads, self.window, self.shift = dim, heads, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim, approximate="tanh")
        w = window
        self.table = nn.Parameter(torch.randn((2 * w - 1) ** 2, heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
        self.register_buffer("index", rel[..., 0] * (2 * w - 1) + rel[..., 1], persistent=False)
        # The shifted-window mask: tokens from different regions never attend to each other.
        region = torch.zeros(size, size)
        cnt = 0
        for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
                region[hs, ws] = cnt
                cnt += 1
        r = self._partition(region[None, :, :, None]).squeeze(-1)  # (nW, w*w)
        mask = r[:, None, :] - r[:, :, None]
        self.register_buffer("mask", torch.where(mask != 0, -100.0, 0.0), persistent=False)

    def _partition(self, x):
        b, h, wd, c = x.shape
        w = self.window
        x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, w * w, c)

    def forward(self, x):  # x: (B, H, W, C), channels last
        b, h, wd, c = x.shape
        w = self.window
        shortcut = x
        x = torch.roll(self.norm1(x), shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = self._partition(x)  # (B*nW, w*w, C)
        bias = self.table[self.index.reshape(-1)].reshape(w * w, w * w, -1).permute(2, 0, 1)
        nw = self.mask.shape[0]
        bias = bias[None, None] + self.mask[None, :, None]  # (1, nW, heads, w*w, w*w)
        bias = bias.expand(b, -1, -1, -1, -1).reshape(-1, self.heads, w * w, w * w)
        out = self.attn(win, bias)
        out = out.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)
        x = shortcut + torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return x + self.mlp(self.norm2(x))


@_register("swin_block", (1, 8, 8, 16))
def _():
    return SwinBlock()


# --------------------------------------------------------------------------
# ConvNeXt block
# --------------------------------------------------------------------------


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


@_register("convnext_block", (1, 8, 9, 9))
def _():
    return ConvNeXtBlock()


# --------------------------------------------------------------------------
# text transformer on int64 tokens
# --------------------------------------------------------------------------


class TextTransformer(nn.Module):
    def __init__(self, vocab=20, dim=16, heads=2, length=6, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(length + 1, dim)
        self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.mix = nn.Parameter(torch.randn(dim, dim) * 0.3)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        keep = (tokens != 0).long()
        positions = torch.cumsum(keep, dim=1) * keep  # padding gets position 0 (RoBERTa style)
        x = self.embed(tokens) + self.pos(positions)
        n = tokens.shape[1]
        causal = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
        x = self.layer(x, src_mask=causal)
        x = torch.einsum("btd,de->bte", x, self.mix)  # a weight einsum: goes onto crossbars
        scores = torch.einsum("btd,bsd->bts", x, x).softmax(-1)  # activation x activation: digital
        x = torch.einsum("bts,bsd->btd", scores, x)
        w = keep.unsqueeze(-1).to(x.dtype)
        pooled = (self.norm(x) * w).sum(1) / w.sum(1).clamp(min=1.0)
        return self.head(pooled)


@_register("text_transformer", (1, 6), tokens=20)
def _():
    return TextTransformer()


# --------------------------------------------------------------------------
# other normalizations
# --------------------------------------------------------------------------


@_register("groupnorm", (1, 3, 6, 6))
def _():
    # Two groups of four channels, then one channel per group.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 6, 1),
                         nn.GroupNorm(6, 6))


@_register("instancenorm", (1, 3, 6, 6))
def _():
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.InstanceNorm2d(6, affine=True), nn.ReLU(), nn.Conv2d(6, 4, 1),
                         nn.InstanceNorm2d(4))


@_register("lrn", (1, 3, 6, 6))
def _():
    return nn.Sequential(nn.Conv2d(3, 7, 3), nn.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=2.0), nn.ReLU(),
                         nn.Conv2d(7, 4, 1))


# --------------------------------------------------------------------------
# scatter
# --------------------------------------------------------------------------


class Scatter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.register_buffer("idx", torch.tensor([[2, 0, 1, 5, 3, 4], [1, 1, 0, 0, 2, 2]]), persistent=False)

    def forward(self, x):  # (B, 2, 6)
        y = self.fc(x)
        idx = self.idx.expand(x.shape[0], -1, -1)
        a = torch.zeros_like(y).scatter(2, idx, y)  # ScatterElements
        b = torch.zeros_like(y).scatter_add(2, idx, y)  # ScatterElements, reduction add
        c = y.clone()
        c[:, :, 1] = a[:, :, 0] * 2.0  # index_put: ScatterND (or Slice/Concat)
        return a + b + c


@_register("scatter", (1, 2, 6))
def _():
    return Scatter()


# --------------------------------------------------------------------------
# upsampling (Resize), as in UNet / FPN decoders
# --------------------------------------------------------------------------


class UpsampleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):  # (B, 3, 9, 10): odd sizes, so sizes and scales differ
        e = torch.relu(self.enc(x))
        d = torch.relu(self.down(e))
        near = F.interpolate(d, scale_factor=2.0, mode="nearest")[..., : e.shape[2], : e.shape[3]]
        bil = F.interpolate(self.mix(d), size=e.shape[2:], mode="bilinear", align_corners=False)
        cor = F.interpolate(d, size=e.shape[2:], mode="bilinear", align_corners=True)
        cub = F.interpolate(d, scale_factor=1.5, mode="bicubic", align_corners=False)
        return self.head(e + near + bil + cor) + cub.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)


@_register("upsample", (1, 3, 9, 10))
def _():
    return UpsampleNet()


__all__ = ["TZOO", "TModel", "build", "example_input"]
