"""Trainer vs a plain eager PyTorch loop, same model, data tensors, batch size and thread count."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from tasks.mnist.data import load_mnist, stratified_subset
from tasks.mnist.loop import compile_for_eval, evaluate, make_optimizer, to_model_input, train_epoch
from tasks.mnist.model import ReflectCNN


def plain_inputs(images: torch.Tensor) -> torch.Tensor:
    """What pytorch/examples feeds its model: normalised NCHW floats."""
    return ((images.float() / 255.0 - 0.1307) / 0.3081).unsqueeze(1)


def plain_train_epoch(model, optimizer, images, labels, batch_size, generator) -> None:
    # pytorch/examples mnist/main.py train(), minus the DataLoader: same shuffled batches.
    model.train()
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(images), batch_size):
        idx = order[start : start + batch_size]
        data, target = images[idx], labels[idx]
        optimizer.zero_grad()
        output = model(data)
        loss = F.cross_entropy(output, target)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def plain_evaluate(model, images, labels, batch_size=1000) -> float:
    # pytorch/examples mnist/main.py test(), minus the DataLoader.
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        output = model(images[start : start + batch_size])
        F.cross_entropy(output, labels[start : start + batch_size], reduction="sum").item()
        correct += output.argmax(1).eq(labels[start : start + batch_size]).sum().item()
    return correct / len(images)


def measure(n_train: int = 6000, batch_size: int = 64, epochs: int = 3, threads: int = 2) -> dict[str, float]:
    torch.set_num_threads(threads)
    data = load_mnist()
    subset = stratified_subset(data.train_labels, n_train, seed=0)
    labels, val_labels = data.train_labels[subset], data.test_labels
    device = torch.device("cpu")
    figures: dict[str, float] = {}

    # Training throughput, alternating the two so drift on a shared machine hits both alike.
    plain_x, fast_x = plain_inputs(data.train_images[subset]), to_model_input(data.train_images[subset], device)
    torch.manual_seed(0)
    plain = ReflectCNN()
    torch.manual_seed(0)
    fast = ReflectCNN().to(memory_format=torch.channels_last)
    opt_plain, opt_fast = torch.optim.Adam(plain.parameters(), 1e-3), make_optimizer(fast, 1e-3)
    g_plain, g_fast = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain_train_epoch(plain, opt_plain, plain_x, labels, batch_size, g_plain)  # warm-up
    train_epoch(fast, opt_fast, fast_x, labels, batch_size, g_fast)
    # Best epoch of each (timeit's rule): on a shared machine, noise only ever adds time.
    t_plain = t_fast = float("inf")
    for _ in range(epochs):
        started = time.perf_counter()
        plain_train_epoch(plain, opt_plain, plain_x, labels, batch_size, g_plain)
        t_plain = min(t_plain, time.perf_counter() - started)
        started = time.perf_counter()
        train_epoch(fast, opt_fast, fast_x, labels, batch_size, g_fast)
        t_fast = min(t_fast, time.perf_counter() - started)
    figures["train_images_per_s_plain"] = n_train / t_plain
    figures["train_images_per_s_trainer"] = n_train / t_fast
    figures["train_speedup"] = t_plain / t_fast

    # Validation pass over the 10,000 test images.
    plain_val, fast_val = plain_inputs(data.test_images), to_model_input(data.test_images, device)
    started = time.perf_counter()
    forward, _ = compile_for_eval(fast, fast_val[:1000])
    figures["eval_compile_warmup_s"] = time.perf_counter() - started
    t_plain = t_fast = float("inf")
    for _ in range(epochs):
        started = time.perf_counter()
        plain_evaluate(plain, plain_val, val_labels)
        t_plain = min(t_plain, time.perf_counter() - started)
        started = time.perf_counter()
        evaluate(fast, fast_val, val_labels, forward=forward)
        t_fast = min(t_fast, time.perf_counter() - started)
    figures["eval_s_plain"], figures["eval_s_trainer"] = t_plain, t_fast
    figures["eval_ratio"] = t_fast / t_plain
    return figures
