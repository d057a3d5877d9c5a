"""Phase 1 (standard training), then phase 2 (training with the kernel of
θ(t) frozen), then clean and PGD test accuracies. See README.md."""

import experiment
import utils


def parse_args(argv=None):
    p = utils.ArgumentParser(description=__doc__)
    # The original's flags, with its defaults.
    p.add_argument(
        "--standard_epochs",
        type=int,
        default=100,
        help="phase-1 epochs (default 100)",
    )
    p.add_argument(
        "--linear_epochs",
        type=int,
        default=100,
        help="phase-2 epochs (default 100; 0 skips phase 2)",
    )
    p.add_argument(
        "--centering",
        action="store_true",
        help="phase 2 trains the centered linearization J(θ−θ(t))",
    )
    p.add_argument(
        "--save_models", action="store_true", help="write parameters_final.pkl"
    )
    p.add_argument(
        "--constant_save",
        action="store_true",
        help="checkpoint every phase-1 epoch and at epochs 0.125, "
        "0.25, 0.375, 0.5, 0.75, 1.5, 2.5",
    )
    p.add_argument(
        "--constant_save_linear",
        action="store_true",
        help="checkpoint every phase-2 epoch",
    )
    p.add_argument(
        "--loose_bn_second",
        action="store_true",
        help="batch norm in training mode during phase 2",
    )
    p.add_argument(
        "--do_standard_second",
        action="store_true",
        help="phase 2 trains the network itself, not its linearization",
    )
    p.add_argument(
        "--skip_first_test",
        action="store_true",
        help="no evaluation after phase 1",
    )
    p.add_argument(
        "--skip_second_test",
        action="store_true",
        help="no evaluation after phase 2",
    )
    p.add_argument("--random_seed", type=int, default=0)
    p.add_argument(
        "--base_model_path",
        default="",
        help="checkpoint holding θ(t); phase 1 is skipped",
    )
    p.add_argument(
        "--model",
        default=None,
        choices=("resnet18", "mlp_skinny", "mlp_wide"),
        help="default resnet18, or the base model's",
    )
    p.add_argument(
        "--loaders",
        default="CC",
        help="two letters, phase 1 then phase 2: C benign, "
        "A adversarial, F benign then adversarial from "
        "epoch 50 (default CC)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="cifar10 (default), cifar100, fashion_mnist, mnist",
    )
    p.add_argument(
        "--second_lr",
        type=float,
        default=0.01,
        help="phase-2 learning rate (default 0.01)",
    )
    p.add_argument(
        "--eps",
        type=float,
        default=4.0,
        help="L∞ radius in 1/255 units (default 4.0)",
    )
    p.add_argument("--save_path", default="./saved_models/")
    p.add_argument("--data_path", default="./data")
    # Ours.
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="ResNet first-stage channels (default 64)",
    )
    p.add_argument(
        "--train_size",
        type=int,
        default=None,
        help="class-balanced training subset (default all)",
    )
    p.add_argument(
        "--test_size",
        type=int,
        default=None,
        help="class-balanced test subset (default all)",
    )
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--train_pgd_iters", type=int, default=20)
    p.add_argument("--eval_pgd_iters", type=int, default=100)
    p.add_argument(
        "--eval_attacks",
        default="linf,l2",
        help="comma-separated subset of linf,l2; empty: clean only",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --save_path",
    )
    p.add_argument(
        "--state_every",
        type=int,
        default=100,
        help="save the resume state every N batches (and at every epoch end)",
    )
    p.add_argument(
        "--no_progress", action="store_true", help="no progress bars"
    )
    return p.parse_args(argv)


def main(argv=None):
    experiment.run_experiment(parse_args(argv))


if __name__ == "__main__":
    utils.run_cli(main)
