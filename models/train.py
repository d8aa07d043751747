"""Train and export the models and data sets shipped in models/.

Usage:
    python models/train.py [--out models/]

Produces, in --out:
    cnn_bn.onnx          small CNN, BatchNormalization nodes kept
    resnet_bn.onnx       small ResNet, BatchNormalization nodes kept
    resnet_folded.onnx   the same ResNet weights, BN folded into the convs
    digits_train.npz     training split (835 samples): x, y, idx
    digits_calib.npz     calibration split (512 samples): x, y, idx
    digits_test.npz      test split (450 samples): x, y, idx

    python models/train.py --train-split-only
writes digits_train.npz alone (no training, no export): the split depends only on
SEED and load_digits, so it can be added without rewriting the models or the other
splits (np.savez stamps the archive with the write time, so rewriting an .npz changes
its bytes even when its arrays are the same).

Data: scikit-learn's bundled `load_digits` (1797 images of 8x8, values 0..16).
Images are scaled to [0, 1], then upsampled in NumPy to 16x16 by bilinear
interpolation (half-pixel centres, edge clamped; the same rule as
torch.nn.functional.interpolate(mode="bilinear", align_corners=False)).
Model input: float32 NCHW, shape (batch, 1, 16, 16), batch dimension dynamic.

The splits depend only on SEED and on the order of load_digits; `idx` in the npz
files gives the rows of load_digits each sample came from. The train split is
shipped so that fine-tuning (`xbar finetune`) runs offline.

Everything is seeded and runs single-threaded with deterministic algorithms,
so reruns on the same software stack give the same weights.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
N_CALIB = 512
N_TEST = 450
SIZE = 16  # model input is (N, 1, SIZE, SIZE)
EPOCHS = 40
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1  # augmentation: random shift of up to 1 pixel (16x16 grid) in x and y
OPSET = 17
ATOL = 1e-4


# --------------------------------------------------------------------------- data


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation, half-pixel centres."""
    w = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        src = min(max(src, 0.0), n_in - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        w[i, lo] += 1.0 - frac
        w[i, hi] += frac
    return w


def load_data():
    """Return x (N,1,SIZE,SIZE) float32 in [0,1], y (N,) int64."""
    d = load_digits()
    x8 = d.images.astype(np.float64) / 16.0  # (N, 8, 8) in [0, 1]
    w = bilinear_matrix(8, SIZE)
    x = np.einsum("ij,njk,lk->nil", w, x8, w)  # W @ img @ W.T
    x = np.clip(x, 0.0, 1.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    return x, y


def split(y: np.ndarray):
    """Stratified, disjoint train / calib / test index arrays (fixed seed)."""
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=N_TEST, stratify=y, random_state=SEED)
    train, calib = train_test_split(
        rest, test_size=N_CALIB, stratify=y[rest], random_state=SEED + 1
    )
    train, calib, test = np.sort(train), np.sort(calib), np.sort(test)
    assert len(calib) == N_CALIB and len(test) == N_TEST
    assert not (set(train) & set(calib) or set(train) & set(test) or set(calib) & set(test))
    assert len(train) + len(calib) + len(test) == len(y)
    return train, calib, test


def save_split(path: Path, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> None:
    np.savez(path, x=x[rows], y=y[rows], idx=rows.astype(np.int64))


def random_shift(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer offset in [-MAX_SHIFT, MAX_SHIFT]^2, zero fill."""
    n, _, h, w = xb.shape
    p = MAX_SHIFT
    padded = F.pad(xb, (p, p, p, p))
    offs = torch.randint(0, 2 * p + 1, (n, 2), generator=gen)
    out = torch.empty_like(xb)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


# ------------------------------------------------------------------------- models


class CNN(nn.Module):
    """Conv-BN-ReLU x3 with two MaxPools, Flatten, Linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x16 -> 8x8
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.features(x)))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, Add, ReLU (bias-free convs)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem 16ch @16x16; blocks 16 (s1), 32 (s2, projection shortcut), 32 (s1); GAP; Linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.layer1 = BasicBlock(16, 16, 1)  # 16x16
        self.layer2 = BasicBlock(16, 32, 2)  # -> 8x8
        self.layer3 = BasicBlock(32, 32, 1)  # 8x8
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


# ----------------------------------------------------------------------- training


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(xt) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, epochs=EPOCHS, steps_per_epoch=steps_per_epoch
    )
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(steps_per_epoch):
            b = perm[s * BATCH : (s + 1) * BATCH]
            xb = random_shift(xt[b], gen)
            loss = F.cross_entropy(model(xb), yt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


# ------------------------------------------------------------------ export/verify


def export(model: nn.Module, path: Path, fold: bool) -> None:
    dummy = torch.zeros(1, 1, SIZE, SIZE)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=fold,
    )


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_logits(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return sess.run(["logits"], {"input": x})[0]


def verify(path: Path, model: nn.Module, x: np.ndarray, expect_bn: bool) -> dict:
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    n_bn = ops.count("BatchNormalization")
    if expect_bn:
        assert n_bn > 0, f"{path.name}: expected BatchNormalization nodes, found none"
    else:
        assert n_bn == 0, f"{path.name}: expected no BatchNormalization, found {n_bn}"
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_logits(ort_session(path), x)
    err = float(np.max(np.abs(ref - got)))
    assert err <= ATOL, f"{path.name}: onnxruntime vs torch max |diff| {err:.3g} > {ATOL}"
    n_init = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    counts = {}
    for o in ops:
        counts[o] = counts.get(o, 0) + 1
    return {"bn": n_bn, "max_err": err, "onnx_params": n_init, "ops": counts}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent),
                    help="output directory (default: the folder of this script)")
    ap.add_argument("--train-split-only", action="store_true",
                    help="write digits_train.npz only: no training, no export, no other file touched")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.train_split_only:
        x, y = load_data()
        tr, _, _ = split(y)
        save_split(out / "digits_train.npz", x, y, tr)
        print(f"wrote {out / 'digits_train.npz'}: {len(tr)} samples")
        return

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    x, y = load_data()
    tr, ca, te = split(y)
    print(f"data: {len(y)} samples, input shape (N, 1, {SIZE}, {SIZE}); "
          f"train {len(tr)} / calib {len(ca)} / test {len(te)} (seed {SEED})")
    save_split(out / "digits_train.npz", x, y, tr)
    save_split(out / "digits_calib.npz", x, y, ca)
    save_split(out / "digits_test.npz", x, y, te)

    t0 = time.perf_counter()
    cnn = train(CNN(), x[tr], y[tr], seed=SEED)
    t_cnn = time.perf_counter() - t0
    t0 = time.perf_counter()
    resnet = train(ResNet(), x[tr], y[tr], seed=SEED)
    t_res = time.perf_counter() - t0
    print(f"training time: cnn {t_cnn:.1f} s, resnet {t_res:.1f} s, total {t_cnn + t_res:.1f} s")

    specs = [
        ("cnn_bn.onnx", cnn, False, True),
        ("resnet_bn.onnx", resnet, False, True),
        ("resnet_folded.onnx", resnet, True, False),
    ]
    xv = np.concatenate([x[ca], x[te]])  # inputs for the torch-vs-onnxruntime check
    rows = []
    for name, model, fold, expect_bn in specs:
        path = out / name
        export(model, path, fold)
        info = verify(path, model, xv, expect_bn)
        sess = ort_session(path)
        acc_te = float(np.mean(ort_logits(sess, x[te]).argmax(1) == y[te]))
        acc_ca = float(np.mean(ort_logits(sess, x[ca]).argmax(1) == y[ca]))
        rows.append((name, n_params(model), info, acc_te, acc_ca, os.path.getsize(path)))
        ops = ", ".join(f"{k} {v}" for k, v in sorted(info["ops"].items()))
        print(f"{name}: ops {{{ops}}}")

    print()
    print(f"{'model':<20} {'torch params':>12} {'onnx params':>11} {'BN nodes':>8} "
          f"{'max|ort-torch|':>14} {'test acc':>9} {'calib acc':>9} {'bytes':>8}")
    for name, p, info, acc_te, acc_ca, size in rows:
        print(f"{name:<20} {p:>12} {info['onnx_params']:>11} {info['bn']:>8} "
              f"{info['max_err']:>14.2e} {acc_te:>9.4f} {acc_ca:>9.4f} {size:>8}")
    print(f"(accuracies measured with onnxruntime; test n={len(te)}, calib n={len(ca)})")


if __name__ == "__main__":
    main()
