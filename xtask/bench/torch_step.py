"""The PyTorch side of `cargo xtask bench cpu`: one training step and one evaluation forward of
the same model, shapes, initialisation scheme, batch and optimizer as mmbal's row, on the CPU.

The encoders are tests/fixtures/mmbal_mirror.py (layer-for-layer mirrors of mmbal's SmallCnn and
ResNet-18, also used for the golden tests); frames (B, T, C, H, W) are folded into the batch and
their features averaged over T, as mmbal does; the head is one Linear over the concatenated
features; the loss is cross-entropy on it. Prints one JSON line.

    python3 xtask/bench/torch_step.py --row avmnist --steps 10 --threads 2
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures"))
from mmbal_mirror import ResNet18, SmallCnn  # noqa: E402

# Must match ROWS in xtask/src/bench_cpu.rs.
ROWS = {
    "avmnist": dict(batch=32, classes=10, inputs=[(1, 64, 40), (1, 28, 28)],
                    encoders=[("small-cnn", 1, 8), ("small-cnn", 1, 8)], optimizer=("adam", 0.005)),
    "grid": dict(batch=16, classes=10, inputs=[(1, 120, 64), (8, 1, 32, 48)],
                 encoders=[("resnet18", 1, 0.125), ("resnet18", 1, 0.125)], optimizer=("adam", 0.002)),
    "cremad": dict(batch=8, classes=6, inputs=[(1, 257, 188), (1, 3, 224, 224)],
                   encoders=[("resnet18", 1, 1.0), ("resnet18", 3, 1.0)], optimizer=("sgd", 1e-3)),
}


class Model(nn.Module):
    def __init__(self, row):
        super().__init__()
        encs = []
        for kind, cin, width in row["encoders"]:
            encs.append(SmallCnn(cin, width) if kind == "small-cnn" else ResNet18(cin, width))
        self.encoders = nn.ModuleList(encs)
        dims = [e(torch.zeros(2, *shape[-3:])).shape[1] for e, shape in zip(encs, row["inputs"])]
        self.fc = nn.Linear(sum(dims), row["classes"])

    def forward(self, xs):
        feats = []
        for enc, x in zip(self.encoders, xs):
            if x.dim() == 5:
                b, t = x.shape[:2]
                feats.append(enc(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1).mean(1))
            else:
                feats.append(enc(x))
        return self.fc(torch.cat(feats, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", required=True, choices=sorted(ROWS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    row = ROWS[a.row]
    model = Model(row)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    kind, lr = row["optimizer"]
    if kind == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    b = row["batch"]
    xs = [torch.randn(b, *shape) for shape in row["inputs"]]
    labels = torch.arange(b) % row["classes"]

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(xs), labels)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    train_ms = 1000 * (time.perf_counter() - t0) / a.steps
    model.eval()
    with torch.no_grad():
        for _ in range(a.warmup):
            model(xs)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            model(xs)
        eval_ms = 1000 * (time.perf_counter() - t0) / a.steps
    print(json.dumps({"row": a.row, "train_ms": train_ms, "eval_ms": eval_ms,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
