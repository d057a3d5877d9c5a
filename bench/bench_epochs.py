"""Training throughput of the four kinds of epoch, in images/s and FLOP/s.

Phase 1 (the network, batch norm in training mode, the paper's learning-rate
schedule) and centered phase 2 (J(θ − θ(t)) around a frozen θ(t), batch
norm in eval mode, learning rate 0.01), each benign and adversarial (two SGD
updates around a 20-step PGD-L∞ of ε = 4/255 per batch), on a ResNet-18 of
`--width` and random images of `--image_shape`, through the real training
code (`train.make_step_fns`, `train.run_phase`). Each kind runs two epochs:
the first compiles its step (reported apart), the second is timed.

FLOPs are XLA's own count for one compiled step (`cost_analysis()`). XLA
counts the body of a while loop once, whatever its trip count, so for an
adversarial step the PGD loop's other iterations are added: (iters − 1) ×
the FLOPs of one iteration, itself XLA's count of the attack with one
iteration minus that with none. The analytic forward-pass count of the
ResNet (2 × multiply-adds of its convolutions and final layer) is printed
beside, as a check of scale. Achieved FLOP/s is the step's FLOPs times the
steps of the timed epoch, over its seconds; the device's peak is shown where
known (XLA's default float32 convolutions and products run as TF32 on
Hopper GPUs, so that is the peak to compare with).

With `--torch_reference`, each phase-1 kind is also timed in PyTorch
(bench/torch_epochs.py: the same network, update scheme and PGD) in the
same run, and printed as a row of its own, its FLOP/s from our XLA count
of the same kind. `--peak_gflops` gives a device's peak where the table
does not know it (a CPU's: cores × clock × FLOPs per cycle).

  .venv/bin/python bench/bench_epochs.py --width 8 --images 512     # CPU
  .venv/bin/python bench/bench_epochs.py --width 16 --images 256 \
      --image_shape 28x28x1 --pgd_iters 5 --torch_reference --peak_gflops 166
  python3 bench/bench_epochs.py --width 64 --images 10240 --json out.json
"""

import dataclasses
import os
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

# The code measured: this checkout's, or BENCH_CODE_DIR's (e.g. an earlier
# revision unpacked beside it, for a before/after comparison in one run).
CODE_DIR = os.environ.get("BENCH_CODE_DIR") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)
sys.path.insert(0, CODE_DIR)
import attacks  # noqa: E402
import cli  # noqa: E402
import data  # noqa: E402
import models  # noqa: E402
from store import atomic  # noqa: E402
from training import train  # noqa: E402

N_CLASSES = 10
EPS_255 = 4.0
PHASE2_LR = 0.01  # run_exp.py's --second_lr default
IMAGE_SHAPES = {"32x32x3": (32, 32, 3), "28x28x1": (28, 28, 1)}
CENTERED_LINEAR = models.Dynamics(linear=True, centering=True)
# (phase, adversarial) of the four kinds, in the order they are printed.
KINDS = (
    ("phase1", False),
    ("phase1", True),
    ("phase2c", False),
    ("phase2c", True),
)
PHASE_NAMES = {"phase1": "phase 1", "phase2c": "centered phase 2"}
KIND_NAMES = [f"{p}-{'adv' if a else 'benign'}" for p, a in KINDS]

# Dense peak TFLOP/s by device kind (substring of jax's device_kind):
# (float32 on CUDA cores, TF32 tensor cores, BF16 tensor cores), from
# NVIDIA's data sheets. The H200 has the H100 SXM's compute.
PEAK_TFLOPS = {
    "H100 PCIe": (51.0, 378.0, 756.0),
    "H100": (67.0, 495.0, 989.0),
    "H200": (67.0, 495.0, 989.0),
}


def device_peak_tflops(device_kind: str) -> tuple | None:
    """(fp32, tf32, bf16) dense peak TFLOP/s of `device_kind`, or None
    (CPUs and unlisted devices)."""
    for name, peak in PEAK_TFLOPS.items():  # the more specific names first
        if name in device_kind:
            return peak
    return None


def resnet18_forward_flops(
    width: int, image_shape: tuple, n_classes: int = N_CLASSES
) -> int:
    """FLOPs (2 × multiply-adds) of one image's forward pass through
    models.CifarResNet18: its convolutions and final linear layer; batch
    norm, ReLU and pooling (a few per activation) are left out.

    Args:
      width: channels of the first stage (stages width·(1, 2, 4, 8)).
      image_shape: (H, W, C) of the input.
    """
    height, breadth, channels = image_shape
    macs = height * breadth * 9 * channels * width  # 3×3 stem, stride 1
    c_in = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        c_out = width * 2**stage
        height, breadth = -(-height // stride), -(-breadth // stride)
        positions = height * breadth
        macs += positions * 9 * c_in * c_out  # first conv (strided)
        macs += 3 * positions * 9 * c_out * c_out  # the three others
        if stage > 0:  # 1×1 projection of the shortcut
            macs += positions * c_in * c_out
        c_in = c_out
    macs += c_in * n_classes
    return 2 * macs


def xla_flops(compiled) -> float:
    """XLA's FLOP count of a compiled function (`jit(f).lower(...)
    .compile()`); its while-loop bodies are counted once."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # one entry per module on JAX 0.5
        cost = cost[0]
    return float(cost["flops"])


def pgd_iteration_flops(
    apply_fn, dynamics, trainable, params0, net_state, x, y, attack
) -> float:
    """XLA's FLOPs of one iteration of `attack` on batch (x, y) against the
    model the adversarial step attacks (batch norm in eval mode): the
    attack compiled with one iteration minus the attack with none."""

    def attack_with(iters):
        def run(trainable, params0, net_state, x, y, key):
            def logits_fn(images):
                return dynamics.logits(
                    apply_fn, params0, trainable, net_state, images, False
                )[0]

            config = dataclasses.replace(attack, iters=iters)
            return attacks.pgd(logits_fn, x, y, key, config)

        args = (trainable, params0, net_state, x, y, jax.random.PRNGKey(0))
        return xla_flops(jax.jit(run).lower(*args).compile())

    return attack_with(1) - attack_with(0)


@dataclasses.dataclass
class KindResult:
    """One kind of epoch: seconds, images/s and FLOPs."""

    phase: str
    adversarial: bool
    images: int
    batch_images: int  # images in the step whose FLOPs were counted
    compile_s: float  # ahead-of-time compile of one step (lower + compile)
    first_epoch_s: float  # the first epoch, compiling its step again
    epoch_s: float  # the second epoch, compiled
    step_flops: float  # XLA's FLOPs of that step, loops counted

    @property
    def images_per_s(self) -> float:
        return self.images / self.epoch_s

    @property
    def flops_per_image(self) -> float:
        return self.step_flops / self.batch_images

    @property
    def tflops_per_s(self) -> float:
        """Achieved TFLOP/s of the timed epoch: its images times the
        FLOPs per image of a full step, over its seconds."""
        return self.flops_per_image * self.images / self.epoch_s / 1e12


@dataclasses.dataclass
class Wired:
    """One kind of epoch wired to the training code.

    step: the jitted training step of one batch, `step(state, batch, key)`;
    state, batch, key: its arguments for the first full batch. clean_step:
    the phase's benign step (the same as `step` for a benign kind), with the
    same arguments. run_to(epochs, images, labels): trains on to the end of
    epoch `epochs` (counted from 1) over `images`, `labels` (default: the
    kind's) and returns the seconds it took, blocked until the parameters
    are computed.
    """

    dynamics: models.Dynamics
    attack: attacks.AttackConfig
    step: Callable
    state: train.TrainState
    batch: train.Batch
    key: jax.Array
    clean_step: Callable
    run_to: Callable[..., float]

    @property
    def step_args(self) -> tuple:
        """(state, batch, key), the arguments of `step` and `clean_step`."""
        return self.state, self.batch, self.key


def wire(
    phase: str,
    adversarial: bool,
    apply_fn,
    params,
    net_state,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    pgd_iters: int,
) -> Wired:
    """The only function of bench/ that uses train's API (make_step_fns,
    phase1_schedule, constant_schedule, new_train_state, Batch, batch_key,
    PhasePlan, LoopPosition, Hooks, run_phase): adapt it, and nothing else,
    when that API changes. Phase 2 starts from `params` as θ(t)."""
    per_epoch = data.n_batches(len(images), batch_size)
    attack = attacks.train_linf(EPS_255, pgd_iters)
    if phase == "phase1":
        dynamics, bn_training, params0 = models.STANDARD, True, None
        schedule = train.phase1_schedule(per_epoch)
    else:
        dynamics, bn_training, params0 = CENTERED_LINEAR, False, params
        schedule = train.constant_schedule(PHASE2_LR)
    steps = train.make_step_fns(
        apply_fn, dynamics, bn_training, schedule, attack
    )
    state = train.new_train_state(params, params0, net_state)
    key = jax.random.PRNGKey(0)
    batch = train.Batch(images[:batch_size], labels[:batch_size])
    step = steps.adversarial if adversarial else steps.clean
    hooks = train.Hooks(progress=False, state_every=10**9)
    name = "standard" if phase == "phase1" else "linear"
    loader = "A" if adversarial else "C"
    current = [state]
    position = train.LoopPosition()

    def run_to(epochs, run_images=images, run_labels=labels):
        plan = train.PhasePlan(name, epochs, loader, 0, batch_size)
        started = time.perf_counter()
        current[0] = train.run_phase(
            plan,
            steps,
            current[0],
            position,
            run_images,
            run_labels,
            hooks,
            key,
        )
        jax.block_until_ready(current[0].params)
        return time.perf_counter() - started

    return Wired(
        dynamics,
        attack,
        step,
        state,
        batch,
        train.batch_key(key, 0, 0),
        steps.clean,
        run_to,
    )


def run_kind(
    phase: str, adversarial: bool, wired: Wired, apply_fn, n_images: int
) -> KindResult:
    """Compiles one kind's step (timed; XLA's FLOPs), then times two epochs
    of it: the first, then the second."""
    started = time.perf_counter()
    compiled = wired.step.lower(*wired.step_args).compile()
    compile_s = time.perf_counter() - started
    flops = xla_flops(compiled)
    state = wired.state
    x, y = wired.batch
    if adversarial:
        flops += (wired.attack.iters - 1) * pgd_iteration_flops(
            apply_fn,
            wired.dynamics,
            state.params,
            state.params0,
            state.net_state,
            x,
            y,
            wired.attack,
        )
    first = wired.run_to(1)
    second = wired.run_to(2)
    return KindResult(
        phase, adversarial, n_images, len(x), compile_s, first, second, flops
    )


def add_flags(parser) -> None:
    """The flags of the model, images and kinds (shared with
    bench/profile_epochs.py)."""
    positive = cli.positive_int
    parser.add_argument("--width", type=positive, default=8)
    parser.add_argument(
        "--images", type=positive, default=512, help="images per epoch"
    )
    parser.add_argument("--batch_size", type=positive, default=128)
    parser.add_argument("--pgd_iters", type=positive, default=20)
    parser.add_argument(
        "--image_shape", choices=sorted(IMAGE_SHAPES), default="32x32x3"
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KIND_NAMES,
        default=None,
        help="which kinds of epoch (default: all four)",
    )
    parser.add_argument(
        "--json", default=None, help="also write the results to this file"
    )
    parser.add_argument(
        "--torch_reference",
        action="store_true",
        help="also time the phase-1 kinds in PyTorch (bench/torch_epochs.py)",
    )
    parser.add_argument(
        "--peak_gflops",
        type=cli.number(float, 0, above=True),
        default=None,
        help="the device's peak GFLOP/s, where the table does not know it",
    )


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    add_flags(parser)
    return parser.parse_args(argv)


@dataclasses.dataclass
class Setup:
    """What every kind is measured on: the model, its initial parameters,
    random images in [0, 1] and labels (seed 0), and the device."""

    model: object
    params: dict
    net_state: dict
    images: np.ndarray
    labels: np.ndarray
    device: str
    peak: tuple | None
    forward_flops: int


def make_setup(
    width: int,
    image_shape: str,
    n_images: int,
    peak_gflops: float | None = None,
) -> Setup:
    shape = IMAGE_SHAPES[image_shape]
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(n_images, *shape)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, size=n_images).astype(np.int32)
    model = models.get_model("resnet18", N_CLASSES, width)
    params, net_state = models.init_model(model, 0, shape)
    device = jax.devices()[0].device_kind
    peak = device_peak_tflops(device)
    if peak_gflops is not None:  # one number for every precision
        peak = (peak_gflops / 1e3,) * 3
    return Setup(
        model,
        params,
        net_state,
        images,
        labels,
        device,
        peak,
        resnet18_forward_flops(width, shape),
    )


def print_header(setup: Setup, args) -> None:
    """Device, JAX, model, images, analytic FLOPs and peak, two lines."""
    peak = setup.peak
    print(
        f"device: {setup.device}; JAX {jax.__version__}; ResNet-18 width "
        f"{args.width}, {models.count_params(setup.params):,} parameters; "
        f"{args.images} random {args.image_shape} images, batches of "
        f"{args.batch_size}, PGD {args.pgd_iters} steps"
    )
    print(
        f"analytic forward pass: {setup.forward_flops / 1e9:.4f} GFLOP per "
        "image; peak: "
        + (
            f"{args.peak_gflops:g} GFLOP/s (--peak_gflops)"
            if args.peak_gflops
            else f"{peak[1]:.0f} TFLOP/s dense TF32 ({peak[0]:.0f} FP32, "
            f"{peak[2]:.0f} BF16)"
            if peak
            else "unknown for this device"
        ),
        flush=True,
    )


def kind_label(phase: str, adversarial: bool) -> str:
    return (
        f"{PHASE_NAMES[phase]}, {'adversarial' if adversarial else 'benign'}"
    )


TABLE_HEAD = (
    "| epoch | compile (s) | first epoch (s) | epoch (s) | images/s "
    "| GFLOP per image (XLA) | × forward | TFLOP/s | % of peak |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def table_row(result: KindResult, setup: Setup, label: str = "") -> str:
    """One row of TABLE_HEAD's table (the peak: TF32's on GPUs, or
    --peak_gflops); `label` follows the kind's name."""
    per_image = result.flops_per_image
    share = (
        f"{100 * result.tflops_per_s / setup.peak[1]:.1f}"
        if setup.peak
        else "n/a"
    )
    return (
        f"| {kind_label(result.phase, result.adversarial)}{label} "
        f"| {result.compile_s:.1f} | {result.first_epoch_s:.2f} "
        f"| {result.epoch_s:.2f} | {result.images_per_s:,.0f} "
        f"| {per_image / 1e9:.4f} | {per_image / setup.forward_flops:.1f} "
        f"| {result.tflops_per_s:.3f} | {share} |"
    )


def _kind_record(result: KindResult) -> dict:
    return dict(
        dataclasses.asdict(result),
        images_per_s=result.images_per_s,
        flops_per_image=result.flops_per_image,
        tflops_per_s=result.tflops_per_s,
    )


def results_record(
    setup: Setup, args, results: list, reference: list = ()
) -> dict:
    """The run as a JSON-ready dict; `reference`: the PyTorch rows."""
    return {
        "device": setup.device,
        "jax": jax.__version__,
        "width": args.width,
        "images": args.images,
        "image_shape": list(IMAGE_SHAPES[args.image_shape]),
        "batch_size": args.batch_size,
        "pgd_iters": args.pgd_iters,
        "forward_flops_per_image": setup.forward_flops,
        "peak_tflops_fp32_tf32_bf16": setup.peak,
        "code": CODE_DIR,
        "kinds": [_kind_record(r) for r in results],
        "torch_reference": [
            dict(_kind_record(r), torch=torch_version()) for r in reference
        ],
    }


def selected_kinds(kinds) -> list:
    """KINDS, filtered by --kinds."""
    if kinds is None:
        return list(KINDS)
    return [KINDS[KIND_NAMES.index(k)] for k in kinds]


def wire_setup(
    setup: Setup,
    phase: str,
    adversarial: bool,
    batch_size: int,
    pgd_iters: int,
    apply_fn=None,
) -> Wired:
    """`wire` on the setup's parameters, images and labels, through the
    setup's model or `apply_fn` (another apply of the same parameters)."""
    return wire(
        phase,
        adversarial,
        apply_fn or setup.model.apply,
        setup.params,
        setup.net_state,
        setup.images,
        setup.labels,
        batch_size,
        pgd_iters,
    )


def measure(setup: Setup, args, phase: str, adversarial: bool):
    """(KindResult, Wired) of one kind on the setup."""
    wired = wire_setup(
        setup, phase, adversarial, args.batch_size, args.pgd_iters
    )
    result = run_kind(
        phase, adversarial, wired, setup.model.apply, len(setup.images)
    )
    return result, wired


def torch_version() -> str:
    import torch

    return torch.__version__


def measure_torch(setup: Setup, args, ours: KindResult) -> KindResult:
    """The PyTorch reference of a phase-1 kind (bench/torch_epochs.py) on
    the setup's images, as a KindResult with our XLA FLOPs of the kind
    (the same network and scheme) and no compile time."""
    import torch
    import torch_epochs

    torch.set_num_threads(os.cpu_count())
    first, second = torch_epochs.epoch_seconds(
        setup.images,
        setup.labels,
        args.width,
        args.batch_size,
        ours.adversarial,
        EPS_255 / 255.0,
        args.pgd_iters,
    )
    return dataclasses.replace(
        ours, compile_s=0.0, first_epoch_s=first, epoch_s=second
    )


def main(argv=None) -> list:
    args = parse_args(argv)
    setup = make_setup(
        args.width, args.image_shape, args.images, args.peak_gflops
    )
    print_header(setup, args)
    print(f"code: {CODE_DIR}")
    print(TABLE_HEAD)
    results, reference = [], []
    for phase, adversarial in selected_kinds(args.kinds):
        result, _ = measure(setup, args, phase, adversarial)
        results.append(result)
        print(table_row(result, setup), flush=True)
        if args.torch_reference and phase == "phase1":
            reference.append(measure_torch(setup, args, result))
            label = f", PyTorch {torch_version()}"
            print(table_row(reference[-1], setup, label), flush=True)
        if args.json:  # after each kind, so a run cut short keeps them
            atomic.atomic_write_json(
                args.json, results_record(setup, args, results, reference)
            )
    return results


if __name__ == "__main__":
    cli.run_cli(main)
