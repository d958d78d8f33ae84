"""Training-speed baseline for scripts/bench-train: the same networks, data, optimiser
and batch sizes as deephardway's train jobs, in PyTorch on the CPU.

    python train_baseline.py DATASET_DIR SIZE ARCH OPTIMIZER LR EPOCHS BATCH THREADS
    (ARCH: mlp:H1,H2,... or cnn; BATCH 0 = the whole set)

Prints `ms_per_epoch N`: the whole training loop's time over the number of epochs, as
deephardway's `examples/train` measures its own.
"""

import os
import sys
import time

import numpy as np
import torch
from PIL import Image


def load(folder, size):
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    images, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(folder, name))):
            image = Image.open(os.path.join(folder, name, file))
            images.append(image)
            labels.append(index)
    color = any(i.mode not in ("L", "LA", "I", "I;16") for i in images)
    arrays = []
    for image in images:
        image = image.convert("RGB" if color else "L").resize((size, size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        arrays.append(array.transpose(2, 0, 1) if color else array[None])
    return torch.tensor(np.stack(arrays)), torch.tensor(labels), len(classes)


def network(arch, channels, size, classes):
    if arch.startswith("mlp:"):
        widths = [channels * size * size] + [int(h) for h in arch[4:].split(",")]
        layers = [torch.nn.Flatten()]
        for a, b in zip(widths, widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], classes))
    side = size // 4
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * side * side, 64), torch.nn.ReLU(), torch.nn.Linear(64, classes),
    )


def main():
    folder, size, arch, optimizer, lr, epochs, batch, threads = sys.argv[1:9]
    size, lr, epochs, batch, threads = int(size), float(lr), int(epochs), int(batch), int(threads)
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    images, labels, classes = load(folder, size)
    model = network(arch, images.shape[1], size, classes)
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)(model.parameters(), lr=lr)
    n = len(labels)
    batch = n if batch == 0 else min(batch, n)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, batch):
            index = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(images[index]), labels[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"ms_per_epoch {1000 * (time.perf_counter() - started) / epochs:.3f}")


main()
