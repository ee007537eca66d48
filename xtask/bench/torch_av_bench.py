# Copied unchanged (below this header) from the project's shared/bench/torch_av_bench.py, the
# PyTorch reference of `cargo xtask bench train` (xtask/src/gpu.rs), so that it travels with the repository.
"""Reference throughput of the standard audio-visual model in PyTorch (the anchor).

Model: two ResNet-18 encoders trained from scratch (audio: 1-channel spectrogram,
visual: T RGB frames folded into the batch and mean-pooled), concat fusion head,
SGD(lr 1e-3, momentum 0.9, wd 1e-4), cross-entropy. This is the model that the
OGM-GE / PMR / sample-level valuation papers train. Inputs are random tensors
already on the GPU, so this times the model, not data loading.
"""
import json, os, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
import torchvision

def resnet18_trunk(in_ch):
    m = torchvision.models.resnet18(weights=None)
    m.conv1 = nn.Conv2d(in_ch, 64, 7, 2, 3, bias=False)
    m.fc = nn.Identity(); m.avgpool = nn.Identity()
    return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)

class AV(nn.Module):
    def __init__(s, n_cls, T):
        super().__init__(); s.T = T
        s.a = resnet18_trunk(1); s.v = resnet18_trunk(3); s.fc = nn.Linear(1024, n_cls)
    def forward(s, spec, frames):  # spec (B,1,F,T) frames (B*T,3,224,224)
        a = s.a(spec).mean((2, 3))
        v = s.v(frames); B = spec.shape[0]
        v = v.view(B, s.T, 512, -1).mean((1, 3))
        return s.fc(torch.cat([a, v], 1)), a, v

def bench(name, audio_hw, T, B, n_cls, mode, steps=30, warm=8):
    dev = "cuda"
    torch.manual_seed(0)
    m = AV(n_cls, T).to(dev)
    spec = torch.randn(B, 1, *audio_hw, device=dev)
    frames = torch.randn(B * T, 3, 224, 224, device=dev)
    y = torch.randint(0, n_cls, (B,), device=dev)
    if "cl" in mode:
        m = m.to(memory_format=torch.channels_last)
        spec = spec.contiguous(memory_format=torch.channels_last)
        frames = frames.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    amp = "bf16" in mode
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out, a, v = m(spec, frames)
            loss = F.cross_entropy(out, y)
        loss.backward(); opt.step()
    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            m(spec, frames)
    res = {}
    for kind, fn in (("train", step), ("eval", fwd)):
        for _ in range(warm): fn()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(steps): fn()
        torch.cuda.synchronize(); dt = time.perf_counter() - t
        res[kind + "_samples_per_s"] = round(B * steps / dt, 1)
    res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    torch.cuda.reset_peak_memory_stats()
    row = dict(config=name, mode=mode, batch=B, **res)
    print(json.dumps(row), flush=True)
    return row

if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    rows = []
    cfgs = [("ks_fbank_1024x128_T3", (1024, 128), 3, 64, 31),
            ("cremad_stft_257x188_T1", (257, 188), 1, 64, 6),
            ("cremad_stft_257x188_T3", (257, 188), 3, 64, 6)]
    modes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["fp32", "fp32_notf32", "cl_bf16"]
    for name, hw, T, B, n in cfgs:
        for mode in modes:
            # "fp32" is what a PyTorch user gets by default: TF32 convolutions, fp32 matmul.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = mode != "fp32_notf32"
            rows.append(bench(name, hw, T, B, n, mode))
    out = os.environ.get("OUT")
    if out:
        json.dump(rows, open(os.path.join(out, "torch_av_bench.json"), "w"), indent=1)
    print(torch.__version__, torch.cuda.get_device_name(0))
