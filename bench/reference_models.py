"""A small MLP and a tiny CNN, in Haiku and in PyTorch with the same
weights, trained briefly on Fashion-MNIST: the models the attacks are
checked against the reference implementation (torchattacks) on."""

import gzip
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def read_fashion_mnist(train, count):
    """The first `count` images (N, 28, 28, 1) float32 in [0, 1] and labels
    (N,) int32 of Debian's Fashion-MNIST files."""
    split = "train" if train else "t10k"
    path = os.path.join(FASHION_MNIST, f"{split}-images-idx3-ubyte.gz")
    with gzip.open(path) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16)
    path = os.path.join(FASHION_MNIST, f"{split}-labels-idx1-ubyte.gz")
    with gzip.open(path) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    images = pixels.reshape(-1, 28, 28, 1)[:count].astype(np.float32) / 255
    return images, labels[:count].astype(np.int32)


def mlp(images):
    x = hk.Flatten()(images)
    x = jax.nn.relu(hk.Linear(64, name="hidden")(x))
    return hk.Linear(10, name="out")(x)


def cnn(images):
    x = hk.Conv2D(8, 3, stride=2, padding="SAME", name="conv1")(images)
    x = hk.Conv2D(16, 3, stride=2, padding="SAME", name="conv2")(
        jax.nn.relu(x)
    )
    return hk.Linear(10, name="out")(hk.Flatten()(jax.nn.relu(x)))


HAIKU = {"mlp": mlp, "cnn": cnn}


def train(name, images, labels, steps=300, seed=0):
    """Parameters of HAIKU[name] after `steps` Adam steps of batch 128."""
    net = hk.without_apply_rng(hk.transform(HAIKU[name]))
    params = net.init(jax.random.key(seed), images[:1])
    opt = optax.adam(3e-3)
    state = opt.init(params)

    def loss(p, x, y):
        logits = net.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, y
        ).mean()

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(loss)(p, x, y)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = rng.integers(0, len(images), 128)
        params, state = step(params, state, images[i], labels[i])
    return params, jax.jit(lambda x: net.apply(params, x))


def torch_model(name, params):
    """The PyTorch twin of HAIKU[name] with `params`; it takes NCHW images
    (torchattacks' layout) and computes in NHWC order like Haiku."""
    import torch
    from torch import nn

    t = lambda a: torch.tensor(np.asarray(a))

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            if name == "mlp":
                self.layers = nn.ModuleList(
                    [nn.Linear(784, 64), nn.Linear(64, 10)]
                )
                pairs = [("hidden", 0), ("out", 1)]
            else:
                self.layers = nn.ModuleList(
                    [
                        nn.Conv2d(1, 8, 3, stride=2),
                        nn.Conv2d(8, 16, 3, stride=2),
                        nn.Linear(7 * 7 * 16, 10),
                    ]
                )
                pairs = [("conv1", 0), ("conv2", 1), ("out", 2)]
            with torch.no_grad():
                for module, i in pairs:
                    w = params[module]["w"]
                    # Haiku: Linear (in, out), Conv HWIO; torch: (out, in),
                    # OIHW.
                    w = np.transpose(w, (3, 2, 0, 1)) if w.ndim == 4 else w.T
                    self.layers[i].weight.copy_(t(w))
                    self.layers[i].bias.copy_(t(params[module]["b"]))

        def forward(self, x):
            if name == "cnn":
                # Haiku's SAME padding at stride 2 pads 0 before and 1
                # after (28 -> 14 -> 7).
                pad = lambda a: nn.functional.pad(a, (0, 1, 0, 1))
                x = torch.relu(self.layers[0](pad(x)))
                x = torch.relu(self.layers[1](pad(x)))
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            if name == "mlp":
                x = torch.relu(self.layers[0](x))
            return self.layers[-1](x)

    return Twin().eval()


def nchw(images):
    """NHWC numpy images as a torch NCHW tensor."""
    import torch

    return torch.tensor(np.transpose(np.asarray(images), (0, 3, 1, 2)))


def count_wrong(logits_fn, adv, labels):
    return int(jnp.sum(jnp.argmax(logits_fn(adv), -1) != labels))
