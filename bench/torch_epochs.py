"""The PyTorch reference of bench/bench_epochs.py: phase-1 epochs of the
same ResNet-18 under the same update scheme, in PyTorch, for a row timed in
the same run as ours.

The network is models.CifarResNet18's: a 3×3 stride-1 stem, four stages of
two basic blocks (v1: conv, batch norm, ReLU, conv, batch norm, then the
shortcut added and a ReLU) with width·(1, 2, 4, 8) channels and strides
(1, 2, 2, 2), a 1×1 projection with batch norm on the shortcut of stages
2–4, global average pooling and a linear layer; no biases in the
convolutions, batch norm with momentum 0.1 (Haiku's decay 0.9) and eps
1e-5. PyTorch pads its 3×3 convolutions by one pixel on each side where
Haiku's "SAME" pads a stride-2 one (0, 1) on even sizes; the output sizes,
and so the work, are the same.

A benign step is one SGD update (momentum 0.9, rate 0.1, batch norm in
training mode); an adversarial step is train.make_step_fns's: an update on
the clean batch, a PGD-L∞ from a uniform random start against the updated
model in eval mode (`iters` steps of 2ε/iters, input gradients only), then
an update on the adversarial batch.
"""

import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional


class Block(nn.Module):
    """A ResNet v1 basic block; `project` adds the 1×1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, project: bool):
        super().__init__()
        self.conv_0 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn_0 = nn.BatchNorm2d(c_out)
        self.conv_1 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                nn.BatchNorm2d(c_out),
            )
            if project
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.relu(self.bn_0(self.conv_0(x)))
        out = self.bn_1(self.conv_1(out))
        return functional.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """models.CifarResNet18 in PyTorch (NCHW images)."""

    def __init__(self, width: int, channels: int, n_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        layers, c_in = [], width
        for stage, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2**stage
            layers.append(Block(c_in, c_out, stride, stage > 0))
            layers.append(Block(c_out, c_out, 1, False))
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.logits = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        return self.logits(out.mean(dim=(2, 3)))


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    iters: int,
) -> torch.Tensor:
    """PGD-L∞ of attacks.train_linf: a uniform random start in the ball,
    `iters` signed steps of 2ε/iters, each projected onto the ball and
    [0, 1]; the gradient is taken with respect to the images only."""
    step = 2 * eps / iters
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(iters):
        adv.requires_grad_(True)
        loss = functional.cross_entropy(model(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [adv])
        adv = adv.detach() + step * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def make_step(model: nn.Module, adversarial: bool, eps: float, iters: int):
    """step(x, y): one batch of the phase-1 scheme (see the module text)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def update(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        update(x, y)
        if adversarial:
            model.eval()
            adv = pgd(model, x, y, eps, iters)
            update(adv, y)

    return step


def epoch_seconds(
    images: np.ndarray,
    labels: np.ndarray,
    width: int,
    batch_size: int,
    adversarial: bool,
    eps: float,
    iters: int,
) -> tuple[float, float]:
    """(first epoch's seconds, second epoch's seconds) of the PyTorch
    reference on NHWC `images` in [0, 1] and `labels`, seeded at 0."""
    torch.manual_seed(0)
    x_all = torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    )
    y_all = torch.from_numpy(labels.astype(np.int64))
    model = ResNet18(width, x_all.shape[1])
    step = make_step(model, adversarial, eps, iters)
    seconds = []
    for epoch in range(2):
        order = torch.from_numpy(
            np.random.default_rng([0, epoch]).permutation(len(y_all))
        )
        started = time.perf_counter()
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            step(x_all[batch], y_all[batch])
        seconds.append(time.perf_counter() - started)
    return seconds[0], seconds[1]
