"""A short CUDA check of the trainer core, for a machine with a GPU (and no bus or database needed).

    python -m bench.cuda_check --data mnist_1pct.npz      # the npz holds train_x/train_y/test_x/test_y (uint8/int64)
    python -m bench.cuda_check                            # from the MNIST cache, 1pct subset

It trains the paper's CNN on the given device with the blended step and a weight delta, validates with
the compiled forward, writes a checkpoint after epoch 2, restores it into a fresh model and runs epoch 3
again, and prints: images/s per epoch, validation accuracy, and the largest difference between the
resumed and the uninterrupted epoch 3 (0 when the device is deterministic for these kernels).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from tasks.mnist.loop import compile_for_eval, evaluate, make_optimizer, to_model_input, train_epoch
from tasks.mnist.model import ReflectCNN


def load(path: Path | None) -> tuple[torch.Tensor, ...]:
    if path is not None:
        data = np.load(path, allow_pickle=False)
        return tuple(torch.from_numpy(data[k]) for k in ("train_x", "train_y", "test_x", "test_y"))
    from tasks.mnist.data import load_mnist, stratified_subset

    mnist = load_mnist()
    subset = stratified_subset(mnist.train_labels, 600, 0)
    return mnist.train_images[subset], mnist.train_labels[subset], mnist.test_images, mnist.test_labels


def setup(device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = ReflectCNN(0.2).to(device=device, memory_format=torch.channels_last)
    return model, make_optimizer(model, 1e-3), torch.Generator().manual_seed(seed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))  # fmt: skip
    train_x, train_y, test_x, test_y = load(args.data)
    train_x, train_y = to_model_input(train_x, device), train_y.to(device)
    val_x, val_y = to_model_input(test_x, device), test_y.to(device)
    model, optimizer, order = setup(device)
    started = time.perf_counter()
    forward, failure = compile_for_eval(model, val_x[:1000])
    print(f"compile_for_eval: {time.perf_counter() - started:.1f} s, failure={failure}")
    deltas = {"fc.3.weight": torch.full((10, 128), 1e-3, device=device)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.safetensors"
        for epoch in range(1, args.epochs + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr = train_epoch(model, optimizer, train_x, train_y, 64, order, 0.4, deltas)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            ev = evaluate(model, val_x, val_y, forward=forward)
            t2 = time.perf_counter()
            print(f"epoch {epoch}: train {len(train_x) / (t1 - t0):,.0f} images/s, loss {tr.loss:.4f}; "
                  f"val {ev.acc:.4f} in {t2 - t1:.3f} s")  # fmt: skip
            if epoch == 2:
                save_checkpoint(path, TrainingState("r", 2, 1e-3, 0.2, 0.4), model, optimizer, deltas, order)
                after_save = {k: v.clone() for k, v in model.state_dict().items()}
            if epoch == 3:
                uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}
                fresh, fresh_opt, fresh_order = setup(device, seed=7)
                _, fresh_deltas = load_checkpoint(path, "r", fresh, fresh_opt, fresh_order, device)
                same_at_save = max((fresh.state_dict()[k] - v).abs().max().item() for k, v in after_save.items())
                train_epoch(fresh, fresh_opt, train_x, train_y, 64, fresh_order, 0.4, fresh_deltas)
                diff = max((fresh.state_dict()[k] - v).abs().max().item() for k, v in uninterrupted.items())
                print(f"checkpoint: restored weights differ by {same_at_save:.2e}; epoch 3 resumed vs uninterrupted: "
                      f"max |delta weight| {diff:.2e}")  # fmt: skip
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
