"""A zoo of tiny torch networks for the xbar conformance suite.

Every entry is small enough to export, convert and run in milliseconds, and the
zoo jointly covers the operators and attribute combinations xbar supports
(analog Conv1d/2d/3d, Gemm and MatMul layers in their variants, batch-norm kept
or folded, the digital elementwise / activation / pooling / shape operators).

Each :class:`ZooModel` carries a builder returning a freshly initialised module
(seeded, so weights are reproducible), the input shape *including* a batch
dimension (the batch size is replaced by the tests), and a few tags the tests
use to pick subsets:

``bn``       the network contains BatchNorm (its running statistics and affine
             parameters are randomised by :func:`build` so it actually does
             something).
``analog``   the network contains at least one analog layer (Conv/Gemm/MatMul
             with a constant weight).
``tiles``    the network is a good candidate for the small-crossbar
             (multi-tile) and encoding tests.
``digital``  the network has a Conv layer that the tests may keep digital.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    builder: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    tags: frozenset[str] = frozenset()

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode()) & 0x7FFFFFFF


ZOO: dict[str, ZooModel] = {}


def _register(name, shape, tags=()):
    def deco(builder):
        if name in ZOO:
            raise ValueError(f"duplicate zoo model {name}")
        ZOO[name] = ZooModel(name, builder, tuple(shape), frozenset(tags))
        return builder

    return deco


def randomise_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running stats and affine parameters."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=generator) * 0.3)


def build(model: ZooModel) -> nn.Module:
    """Instantiate ``model`` deterministically, in eval mode."""
    torch.manual_seed(model.seed)
    m = model.builder()
    g = torch.Generator().manual_seed(model.seed + 1)
    randomise_batchnorm(m, g)
    return m.eval()


def example_input(model: ZooModel, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(model.seed * 7 + batch * 131 + seed)
    shape = (batch,) + tuple(model.input_shape[1:])
    return torch.randn(*shape, generator=g)


# --------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------

A = ("analog",)
AT = ("analog", "tiles")
ATD = ("analog", "tiles", "digital")
AD = ("analog", "digital")


@_register("conv2d_basic", (1, 3, 8, 8), ATD)
def _():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())


@_register("conv2d_no_bias", (1, 3, 7, 6), AD)
def _():
    return nn.Sequential(nn.Conv2d(3, 5, 3, bias=False))


@_register("conv2d_stride_pad", (1, 3, 9, 9), ATD)
def _():
    return nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=(1, 2), padding=(0, 2)))


@_register("conv2d_dilation", (1, 3, 10, 10), AD)
def _():
    return nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2, padding=2), nn.Conv2d(4, 4, (3, 2), dilation=(1, 3)))


@_register("conv2d_big_pad_1x1_stride", (1, 3, 5, 6), A)
def _():
    # padding larger than the kernel; a 1x1 kernel with stride > kernel
    return nn.Sequential(nn.Conv2d(3, 4, 2, padding=3), nn.Conv2d(4, 5, 1, stride=(3, 2)))


@_register("conv2d_rect_kernel", (1, 3, 8, 7), A)
def _():
    return nn.Sequential(nn.Conv2d(3, 5, (3, 1), stride=(2, 1), padding=(1, 0)), nn.Conv2d(5, 3, (1, 4)))


@_register("conv2d_groups", (1, 4, 6, 6), ATD)
def _():
    return nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Conv2d(6, 6, 1, groups=3))


@_register("conv2d_depthwise", (1, 4, 6, 6), ATD)
def _():
    return nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 1))


@_register("conv2d_depthwise_multiplier", (1, 4, 7, 7), AT)
def _():
    return nn.Sequential(nn.Conv2d(4, 8, 3, groups=4, stride=2))


@_register("conv2d_zeropad_asym", (1, 3, 6, 6), AD)
def _():
    return nn.Sequential(nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(3, 4, 3))


class _FPadConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


@_register("conv2d_fpad_asym", (1, 3, 8, 8), A)
def _():
    return _FPadConv()


@_register("conv2d_same_odd", (1, 3, 7, 7), A)
def _():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(4, 4, 5, padding="same"))


@_register("conv2d_same_even", (1, 3, 6, 6), A)
def _():
    return nn.Sequential(nn.Conv2d(3, 4, 4, padding="same"))


@_register("conv1d", (1, 3, 12), AT)
def _():
    return nn.Sequential(
        nn.Conv1d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(6, 6, 3, groups=3, dilation=2),
        nn.Conv1d(6, 4, 1, bias=False),
    )


@_register("conv3d", (1, 2, 4, 5, 5), AT)
def _():
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1, stride=(1, 2, 2)),
        nn.ReLU(),
        nn.Conv3d(4, 4, (1, 2, 2), groups=2, bias=False),
    )


# --------------------------------------------------------------------------
# Fully connected / matmul
# --------------------------------------------------------------------------


@_register("linear", (1, 20), AT)
def _():
    return nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 4, bias=False))


@_register("linear_wide", (1, 40), AT)
def _():
    return nn.Sequential(nn.Linear(40, 36), nn.Tanh(), nn.Linear(36, 3))


@_register("linear_3d_input", (1, 5, 20), AT)
def _():
    return nn.Sequential(nn.Linear(20, 9), nn.ReLU(), nn.Linear(9, 3, bias=False))


class _MatmulRight(nn.Module):
    """x @ W with a constant W (MatMul, constant second operand), x of rank 3."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(20, 10) * 0.3)

    def forward(self, x):
        return torch.matmul(x, self.w)


class _MatmulLeft(nn.Module):
    """W @ x with a constant W (MatMul, constant first operand), x of rank 3."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(18, 20) * 0.3)

    def forward(self, x):
        return torch.matmul(self.w, x)


@_register("matmul_const_right", (1, 4, 20), AT)
def _():
    return _MatmulRight()


@_register("matmul_const_left", (1, 20, 3), AT)
def _():
    return _MatmulLeft()


class _LinearVariants(nn.Module):
    """F.linear / addmm / x @ W.t() variants: Gemm with transB, alpha, beta."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(10, 20) * 0.3)
        self.b1 = nn.Parameter(torch.randn(10) * 0.1)
        self.w2 = nn.Parameter(torch.randn(20, 10) * 0.3)
        self.b2 = nn.Parameter(torch.randn(10) * 0.1)
        self.w3 = nn.Parameter(torch.randn(10, 20) * 0.3)

    def forward(self, x):
        a = F.linear(x, self.w1, self.b1)  # Gemm transB=1
        b = torch.addmm(self.b2, x, self.w2, beta=0.5, alpha=2.0)  # Gemm alpha/beta
        c = F.linear(x, self.w3)  # no bias
        d = x @ self.w1.t()  # Transpose of a constant (folded or not)
        return a + b - c + d


@_register("linear_variants", (1, 20), AT)
def _():
    return _LinearVariants()


# --------------------------------------------------------------------------
# Batch norm
# --------------------------------------------------------------------------


@_register("bn_after_conv", (1, 3, 6, 6), ("analog", "bn", "tiles", "digital"))
def _():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())


@_register("bn_after_conv_nobias", (1, 3, 6, 6), ("analog", "bn", "digital"))
def _():
    return nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6))


@_register("bn_after_relu", (1, 3, 6, 6), ("analog", "bn", "digital"))
def _():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))


class _BnAfterAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.c1(x) + self.c2(x))


@_register("bn_after_add", (1, 3, 5, 5), ("analog", "bn", "digital"))
def _():
    return _BnAfterAdd()


@_register("bn_on_input", (1, 3, 5, 5), ("analog", "bn"))
def _():
    return nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3))


@_register("bn1d_after_linear", (1, 20), ("analog", "bn", "tiles"))
def _():
    return nn.Sequential(nn.Linear(20, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 3))


@_register("bn1d_after_conv1d", (1, 3, 8), ("analog", "bn"))
def _():
    return nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5))


@_register("bn3d_after_conv3d", (1, 2, 3, 4, 4), ("analog", "bn"))
def _():
    return nn.Sequential(nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3))


class _Residual(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 1, stride=2, bias=False), nn.BatchNorm2d(2 * c))
        self.c3 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.c1(x)))
        y = self.bn2(self.c2(y))
        x = F.relu(x + y)
        x = F.relu(self.bn3(self.c3(x)) + self.down(x))
        x = self.pool(x)
        return self.fc(torch.flatten(x, 1))


@_register("residual_block", (1, 3, 8, 8), ("analog", "bn", "tiles", "digital"))
def _():
    return _Residual()


class _MiniCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.Dropout(0.3),
        )
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))


@_register("mini_cnn", (1, 3, 8, 8), ("analog", "bn", "tiles", "digital"))
def _():
    return _MiniCNN()


# --------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------


def _act(name, acts, shape=(1, 3, 4, 4)):
    """Conv 1x1 followed by the modules ``acts()`` returns (a fresh list per build)."""

    @_register(name, shape, A)
    def _():
        return nn.Sequential(nn.Conv2d(shape[1], 4, 1), *acts())


_act("act_relu", lambda: [nn.ReLU()])
_act("act_leaky_relu", lambda: [nn.LeakyReLU(0.1), nn.Conv2d(4, 4, 1), nn.LeakyReLU()])
_act("act_hardtanh", lambda: [nn.Hardtanh(-0.5, 0.7)])
_act("act_relu6", lambda: [nn.ReLU6()])
_act("act_sigmoid", lambda: [nn.Sigmoid()])
_act("act_tanh", lambda: [nn.Tanh()])
_act("act_elu", lambda: [nn.ELU(alpha=0.7)])
_act("act_selu", lambda: [nn.SELU()])
_act("act_gelu", lambda: [nn.GELU()])
_act("act_hardswish", lambda: [nn.Hardswish()])
_act("act_hardsigmoid", lambda: [nn.Hardsigmoid()])
_act("act_softplus", lambda: [nn.Softplus(), nn.Conv2d(4, 4, 1), nn.Softplus(beta=2.0)])
_act("act_prelu_shared", lambda: [nn.PReLU()])
_act("act_prelu_channel", lambda: [nn.PReLU(4, init=0.1)])


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.clamp(x, min=-0.3) + torch.clamp(x, max=0.2) + torch.clamp(x, -0.1, 0.1)


@_register("act_clamp_one_sided", (1, 3, 4, 4))
def _():
    return _Clamp()


@_register("softmax_2d", (1, 10), A)
def _():
    return nn.Sequential(nn.Linear(10, 6), nn.Softmax(dim=1))


@_register("log_softmax_2d", (1, 10), A)
def _():
    return nn.Sequential(nn.Linear(10, 6), nn.LogSoftmax(dim=-1))


@_register("softmax_channel_4d", (1, 3, 4, 5), A)
def _():
    # dim=1 of a 4-D tensor: opset < 13 exports Transpose + Softmax(axis=-1) + Transpose
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.Softmax(dim=1))


@_register("log_softmax_lastdim_4d", (1, 3, 4, 5), A)
def _():
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.LogSoftmax(dim=-1))


# --------------------------------------------------------------------------
# Elementwise arithmetic, concat, shape manipulation
# --------------------------------------------------------------------------


class _Arith(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 1)
        self.scale = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(4, 1, 1))

    def forward(self, x):
        a = self.c1(x)
        b = self.c2(x)
        y = a + b  # tensor + tensor
        y = y - 0.25 * b  # tensor - const*tensor
        y = y * self.scale + self.shift  # per-channel broadcast constants
        y = 2.0 - y  # const - tensor
        y = y / 3.0  # tensor / const
        y = y / (torch.sigmoid(a) + 0.5)  # tensor / tensor
        y = y * torch.tanh(b)  # tensor * tensor
        return y + 1.5


@_register("arith", (1, 3, 5, 5), AD)
def _():
    return _Arith()


class _ArithBroadcast(nn.Module):
    def forward(self, x):
        # x: (N, 3, 4); reductions-free broadcasting between branches
        row = x[:, :1, :]  # (N, 1, 4) slice -> Slice op
        return (x - row) * 0.5 + x / 2.0


@_register("arith_broadcast_slice", (1, 3, 4))
def _():
    return _ArithBroadcast()


class _Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 1)
        self.c = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), F.relu(self.b(x))], dim=1)
        return torch.cat([self.c(y), x], 1)


@_register("cat", (1, 3, 5, 5), AD)
def _():
    return _Cat()


@_register("cat_last_axis", (1, 2, 3))
def _():
    class M(nn.Module):
        def forward(self, x):
            return torch.cat([x, x * 2.0, -x], dim=-1)

    return M()


@_register("flatten_linear", (1, 3, 4, 4), AT)
def _():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 5))


class _View(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.view(x.size(0), -1))


@_register("view_dynamic_batch", (1, 3, 4, 4), ("analog", "digital"))
def _():
    return _View()


class _Reshape(nn.Module):
    def forward(self, x):
        return x.reshape(-1, 4, 6) * 2.0


@_register("reshape_static", (1, 3, 8))
def _():
    return _Reshape()


class _Permute(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)  # NHWC
        y = self.fc(y)  # MatMul over channels-last
        return y.transpose(1, 2)


@_register("permute_transpose", (1, 3, 4, 5), A)
def _():
    return _Permute()


class _Squeeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)

    def forward(self, x):
        # x: (N, 3, 1, 6) -> squeeze -> conv1d -> unsqueeze
        y = self.conv(x.squeeze(2))
        return y.unsqueeze(1) + y.unsqueeze(-1).transpose(-1, -2)


@_register("squeeze_unsqueeze", (1, 3, 1, 6), A)
def _():
    return _Squeeze()


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------


def _pool(name, pool, shape=(1, 3, 8, 8)):
    """Conv 1x1 followed by ``pool()`` (a fresh module per build)."""

    @_register(name, shape, A)
    def _():
        return nn.Sequential(nn.Conv2d(shape[1], 4, 1), pool())


_pool("maxpool_basic", lambda: nn.MaxPool2d(2))
_pool("maxpool_stride_pad", lambda: nn.MaxPool2d(3, stride=2, padding=1))
_pool("maxpool_dilation", lambda: nn.MaxPool2d(3, stride=1, dilation=2))
_pool("maxpool_ceil", lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True))
_pool("maxpool_rect", lambda: nn.MaxPool2d((2, 3), stride=(1, 2), padding=(1, 1)), shape=(1, 3, 7, 9))
_pool("avgpool_basic", lambda: nn.AvgPool2d(2))
_pool("avgpool_pad_include", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True))
_pool("avgpool_pad_exclude", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False))
_pool("avgpool_ceil", lambda: nn.AvgPool2d(3, stride=2, ceil_mode=True), shape=(1, 3, 8, 8))
_pool("avgpool_ceil_pad_exclude", lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), shape=(1, 3, 8, 8))
_pool("avgpool_ceil_pad_include", lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=True), shape=(1, 3, 8, 8))
_pool("maxpool_all_attrs", lambda: nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True), shape=(1, 3, 9, 10))
_pool("global_avgpool", lambda: nn.AdaptiveAvgPool2d(1), shape=(1, 3, 5, 7))
_pool("adaptive_avgpool_2", lambda: nn.AdaptiveAvgPool2d(2), shape=(1, 3, 6, 6))


@_register("maxpool1d_avgpool1d", (1, 3, 11), A)
def _():
    return nn.Sequential(nn.Conv1d(3, 4, 1), nn.MaxPool1d(3, stride=2, padding=1), nn.AvgPool1d(2))


# --------------------------------------------------------------------------
# Misc
# --------------------------------------------------------------------------


@_register("dropout_eval", (1, 10), A)
def _():
    return nn.Sequential(nn.Linear(10, 8), nn.Dropout(0.5), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


@_register("pixel_shuffle", (1, 3, 3, 3), A)
def _():
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.PixelShuffle(2))


class _Identity(nn.Module):
    def forward(self, x):
        return x


@_register("identity", (1, 3, 4))
def _():
    return _Identity()


__all__ = ["ZOO", "ZooModel", "build", "example_input", "randomise_batchnorm"]
