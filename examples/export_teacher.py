"""Make the teacher file of `studies/mnist_teacher_file.toml`: train a small CNN, export it.

kdsearch distils from a teacher the user already has; this script stands in for that user. It
trains a small PyTorch CNN on the study's own training split (loaded by kdsearch, so the
validation and test images stay unseen) and writes it as ONNX, the format any framework can
export to, and optionally as TorchScript or a `torch.export` archive. A repository is a poor
place for a binary model, hence a script that makes one.

    python examples/export_teacher.py                    # studies/teacher.onnx, ~1 min on a CPU
    python examples/export_teacher.py --format torchscript --out studies/teacher.pt
    kdsearch teacher mnist_teacher_file                  # kdsearch measures it
    kdsearch run-study mnist_teacher_file --n-trials 10

The model takes what `[teacher.input]` in the study declares: float NCHW images scaled to
[0, 1] (scale = 255) and normalised with MNIST's mean 0.1307 and std 0.3081.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MEAN, STD = 0.1307, 0.3081  # what the study's [teacher.input] declares


def teacher_net(classes: int = 10) -> nn.Module:
    """Two conv blocks and a linear head: ~99 % on MNIST after two epochs."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(REPO / "studies" / "mnist_teacher_file.toml"))
    parser.add_argument("--out", type=Path, default=REPO / "studies" / "teacher.onnx")
    parser.add_argument("--format", choices=["onnx", "torchscript", "export"], default="onnx")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, help="as for kdsearch (env KDSEARCH_DATA_DIR)")
    args = parser.parse_args()

    from kdsearch.options import from_environment
    from kdsearch.spec import load_study
    from kdsearch.training.data import load_data

    spec = load_study(args.study)
    data = load_data(spec.data, args.data_dir, data_home=from_environment(os.environ).data_home)
    torch.manual_seed(0)
    net = teacher_net(data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def prepared(x: torch.Tensor) -> torch.Tensor:  # exactly what [teacher.input] declares
        return (x.float() / 255.0 - MEAN) / STD

    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(data.train))
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(prepared(data.train.x[idx])), data.train.y[idx]).backward()
            opt.step()
        net.eval()
        with torch.inference_mode():
            acc = (net(prepared(data.val.x)).argmax(1) == data.val.y).float().mean()
        print(f"epoch {epoch + 1}: val acc {acc:.4f}")

    example = prepared(data.train.x[:2])
    batch = torch.export.Dim("batch", min=1, max=65536)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "onnx":
        torch.onnx.export(net, (example,), str(args.out), dynamic_shapes=({0: batch},),
                          input_names=["images"], output_names=["logits"],
                          external_data=False)  # one file: the weights inside, not beside it
    elif args.format == "torchscript":
        torch.jit.save(torch.jit.trace(net, example), str(args.out))
    else:
        torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)),
                          str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
