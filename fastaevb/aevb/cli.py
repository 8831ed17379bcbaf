"""The ``fastaevb`` command: ``train``, ``eval`` and ``sample`` (``python -m fastaevb ...``,
``torchrun --nproc_per_node=N -m fastaevb train ...``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import data as D
from . import distributed as dist_utils
from . import extras
from .extras import progress_bar
from .models import DECODER_VARIANCES, LIKELIHOODS, VAE, ModelConfig
from .objective import ESTIMATORS, IMPORTANCE_WEIGHTED

DEFAULT_HIDDEN = {"bernoulli": 500, "gaussian": 200}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads per process (default: torch's choice; torchrun sets 1)",
    )
    p.add_argument("--device", default=None, help="'cpu', 'cuda' or 'cuda:N' (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastaevb",
        formatter_class=_Formatter,
        description=(
            "Auto-Encoding Variational Bayes (Kingma & Welling 2014) with fastaevb's fused SGVB ops.\n"
            "Defaults reproduce the paper's MNIST setup (Bernoulli MLP decoder, 500 hidden tanh units,\n"
            "J=20, M=100, L=1, Adagrad, N(0, I) weight prior) on Fashion-MNIST."
        ),
        epilog="Run 'fastaevb COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        formatter_class=_Formatter,
        help="train a VAE (Algorithm 1)",
        description=(
            "Train with minibatch SGVB and Adagrad (Algorithm 1). Writes DIR/checkpoint.pt (atomically,\n"
            "every --checkpoint-every steps, at the end and on SIGINT/SIGTERM), DIR/log.csv\n"
            "(step, datapoints, train_bound, test_bound, seconds) and PNGs (samples, reconstructions,\n"
            "manifold for --latent 2, bound vs datapoints). Under torchrun every process trains a\n"
            "share of each minibatch with DistributedDataParallel; rank 0 writes the files."
        ),
    )
    t.add_argument("--out", type=Path, default=Path("runs/main"), help="output directory")
    t.add_argument(
        "--steps",
        type=int,
        default=10_000,
        help="total parameter updates (a resumed run continues up to this many); datapoints = steps * M",
    )
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order, binarization and eps")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from DIR/checkpoint.pt (bitwise the same run on CPU); starts afresh if there is none",
    )
    t.add_argument(
        "--force",
        action="store_true",
        help="start afresh even if DIR/checkpoint.pt exists (it is overwritten at the first checkpoint)",
    )
    t.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"directory of MNIST-format IDX files, .gz or raw (default: {D.DEFAULT_DATA_DIR})",
    )
    t.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    t.add_argument(
        "--test-limit", type=int, default=None, help="evaluate the test bound on only the first N test images"
    )
    t.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        default="bernoulli",
        help="decoder: Bernoulli on binarized pixels (logits) or Gaussian on grey levels in [0, 1]",
    )
    t.add_argument("--latent", type=int, default=20, help="latent dimension J")
    t.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="hidden units of encoder and decoder (default: 500 Bernoulli, 200 Gaussian, as the paper)",
    )
    t.add_argument(
        "--decoder-variance",
        choices=DECODER_VARIANCES,
        default="shared",
        help="Gaussian decoder log-variance: one learned value, one per pixel, or an MLP output "
        "per pixel and datapoint (the paper's C.2)",
    )
    t.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="analytic",
        help="SGVB estimator: B (eq. 7, analytic KL, the paper's experiments), A (eq. 6, "
        "log p(x|z) + log p(z) - log q(z|x)), or the importance-weighted bound of --samples K "
        "(Burda et al. 2016) with IWAE's encoder gradient or DReG's (Tucker et al. 2019)",
    )
    t.add_argument(
        "--batch-size", type=int, default=100, help="minibatch size M (global: split over the processes under torchrun)"
    )
    t.add_argument("--samples", type=int, default=1, help="samples L per datapoint (K of --estimator iwae / dreg)")
    t.add_argument("--lr", type=float, default=0.02, help="Adagrad step size (the paper chose from 0.01, 0.02, 0.1)")
    t.add_argument(
        "--weight-decay",
        type=float,
        default=1.0,
        help="weight of the N(0, I) parameter prior (MAP); 0 for maximum likelihood",
    )
    t.add_argument(
        "--binarization",
        choices=("dynamic", "static"),
        default="dynamic",
        help="Bernoulli models: a fresh Bernoulli draw of the grey levels every time a datapoint "
        "is used, or thresholding at 0.5",
    )
    t.add_argument("--log-every", type=int, default=100, help="steps between CSV log rows (train bound)")
    t.add_argument("--eval-every", type=int, default=1000, help="steps between test-bound evaluations")
    t.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    t.add_argument("--no-figures", dest="figures", action="store_false", help="do not write PNGs")
    _common(t)

    e = sub.add_parser(
        "eval",
        formatter_class=_Formatter,
        help="test lower bound and importance-sampled log p(x)",
        description=(
            "Evaluate a checkpoint on the test set: the SGVB lower bound and the importance-sampled\n"
            "log p(x) ~= logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K, z_k ~ q(z|x),\n"
            "each per datapoint (nats) with its standard error. The last line printed is\n"
            "'test_elbo=<nats> log_px=<nats>'."
        ),
    )
    e.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint.pt written by train")
    e.add_argument("--samples", type=int, default=5000, help="importance samples K per test datapoint")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    e.add_argument(
        "--data-dir", type=Path, default=None, help="IDX directory (default: the one the checkpoint was trained on)"
    )
    e.add_argument("--batch-size", type=int, default=100, help="test datapoints per batch")
    e.add_argument(
        "--chunk-elements",
        type=int,
        default=1 << 23,
        help="memory bound: importance samples are drawn k at a time with k * batch * pixels <= this",
    )
    e.add_argument(
        "--bound-samples",
        type=int,
        default=None,
        help="samples L of the test lower bound's estimate (default 1; K trained with for iwae / dreg)",
    )
    e.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default=None,
        help="estimator of the test lower bound (default: the one trained with)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise")
    _common(e)

    s = sub.add_parser(
        "sample",
        formatter_class=_Formatter,
        help="pictures from a checkpoint",
        description="Write PNGs from a checkpoint: prior samples, reconstructions of test images, the\n"
        "2-D manifold (J = 2) and the bound curve of its log.",
    )
    s.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint.pt written by train")
    s.add_argument("--out", type=Path, default=None, help="directory for the PNGs (default: the checkpoint's)")
    s.add_argument("--count", type=int, default=100, help="number of prior samples")
    s.add_argument("--seed", type=int, default=0, help="seed of the prior samples")
    s.add_argument(
        "--data-dir", type=Path, default=None, help="IDX directory for the reconstructions (default: the checkpoint's)"
    )
    _common(s)
    return parser


# --- commands ----------------------------------------------------------------------------------


def _model_from(state: dict, path: Path, device: torch.device) -> VAE:
    try:
        model = VAE(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ckpt.CheckpointError(f"{path}: model in checkpoint cannot be rebuilt: {exc}") from exc
    return model.to(device).eval()


def cmd_train(args: argparse.Namespace) -> int:
    from .train import CHECKPOINT_NAME, RunConfig, Schedule, Trainer

    ctx = dist_utils.setup(args.device)
    trainer: Trainer | None = None
    try:
        main = ctx.is_main
        for name in ("steps", "log_every", "eval_every", "checkpoint_every"):
            if getattr(args, name) < (0 if name == "steps" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        path = args.out / CHECKPOINT_NAME
        state = None
        if path.exists():
            if args.resume:
                state = ckpt.load(path)
            elif not args.force:
                raise ckpt.CheckpointError(
                    f"{path} exists; pass --resume to continue that run or --force to start afresh"
                )
        elif args.resume and main:
            print(f"no checkpoint at {path}; starting afresh", file=sys.stderr)
        train_grey, _ = D.load_split(args.data_dir, "train", args.train_limit)
        test_grey, _ = D.load_split(args.data_dir, "test", args.test_limit)
        hidden = args.hidden or DEFAULT_HIDDEN[args.likelihood]
        model_config = ModelConfig(args.likelihood, train_grey.shape[1], hidden, args.latent, args.decoder_variance)
        run = RunConfig(
            args.batch_size, args.samples, args.lr, args.weight_decay, args.estimator, args.binarization, args.seed
        )
        trainer = Trainer(model_config, run, train_grey, ctx)
        trainer.data_dir = str(args.data_dir) if args.data_dir else None
        if state is not None:
            trainer.load_state_dict(state, str(path))
        test_x = D.prepare_test(test_grey, args.likelihood, args.binarization).to(ctx.device)
        schedule = Schedule(
            args.steps,
            args.log_every,
            args.eval_every,
            args.checkpoint_every,
            args.test_limit,
            args.progress,
            args.figures,
        )
        if main:
            args.out.mkdir(parents=True, exist_ok=True)
            n_params = sum(p.numel() for p in trainer.model.parameters())
            print(
                f"model: {model_config} ({n_params} parameters); {run}; processes: {ctx.world_size}; "
                f"threads/process: {torch.get_num_threads()}; from step {trainer.step} to {args.steps}",
                file=sys.stderr,
            )
        t0 = time.perf_counter()
        code = trainer.fit(schedule, args.out if main else None, test_x)
        if code or not main:
            return code
        seconds = time.perf_counter() - t0
        bound = trainer.test_bound(test_x)
        if args.figures:
            from . import figures

            title = f"{args.likelihood} J={args.latent} H={hidden} M={args.batch_size} lr={args.lr} {args.estimator}"
            files = figures.write_all(trainer.model, test_x, trainer.history, args.out, title)
            print("pictures: " + " ".join(str(f) for f in files), file=sys.stderr)
        print(
            f"trained to step {trainer.step} ({trainer.step * args.batch_size} datapoints) in "
            f"{seconds:.1f} s this session; checkpoint: {path}"
        )
        print(f"test_elbo={bound.mean:.4f} (+- {bound.stderr:.4f}, n={bound.count})")
        return 0
    finally:
        if trainer is not None:
            trainer.release_distributed()
        dist_utils.teardown(ctx)


def _load_for_eval(args: argparse.Namespace):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = ckpt.load(args.checkpoint)
    model = _model_from(state, args.checkpoint, device)
    data_dir = args.data_dir or state.get("data_dir") or None
    return state, model, data_dir, device


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import Estimate, elbo, log_marginal

    state, model, data_dir, device = _load_for_eval(args)
    run = state["run_config"]
    estimator = args.estimator or run.get("estimator", "analytic")
    if args.bound_samples is None:  # the importance-weighted runs report the K-sample bound they train on
        args.bound_samples = run.get("samples", 1) if estimator in IMPORTANCE_WEIGHTED else 1
    if args.samples < 1 or args.bound_samples < 1 or args.batch_size < 1:
        raise ValueError("--samples, --bound-samples and --batch-size must be >= 1")
    test_grey, _ = D.load_split(data_dir, "test", args.limit)
    x = D.prepare_test(test_grey, model.config.likelihood, run.get("binarization", "dynamic")).to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.perf_counter()
    bound = Estimate.of(elbo(model, x, estimator=estimator, samples=args.bound_samples, generator=gen))
    t1 = time.perf_counter()
    print(f"checkpoint {args.checkpoint}: step {state['step']}, {model.config}")
    print(f"test lower bound ({estimator} estimator, L={args.bound_samples}): {bound} nats/datapoint [{t1 - t0:.1f} s]")
    with progress_bar(
        args.progress,
        total=x.shape[0],
        unit="dp",
        desc=f"log p(x), K={args.samples}",
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        lpx = Estimate.of(
            log_marginal(
                model,
                x,
                samples=args.samples,
                batch_size=args.batch_size,
                chunk_elements=args.chunk_elements,
                generator=gen,
                progress=bar.update,
            )
        )
    t2 = time.perf_counter()
    print(f"importance-sampled log p(x) (K={args.samples}): {lpx} nats/datapoint [{t2 - t1:.1f} s]")
    print(f"test_elbo={bound.mean:.4f} log_px={lpx.mean:.4f}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from . import figures
    from .train import LOG_NAME, read_log

    state, model, data_dir, _ = _load_for_eval(args)
    out = args.out or args.checkpoint.parent
    files: list[Path | None] = [figures.prior_samples(model, out / "samples.png", args.count, args.seed)]
    try:
        test_grey, _ = D.load_split(data_dir, "test", 100)
        x = D.prepare_test(test_grey, model.config.likelihood, state["run_config"].get("binarization", "dynamic"))
        files.append(figures.reconstructions(model, x.to(next(model.parameters()).device), out / "reconstructions.png"))
    except D.DataError as exc:
        print(f"no reconstructions: {exc}", file=sys.stderr)
    files.append(figures.manifold(model, out / "manifold.png"))
    history = state["history"]
    if not history and (args.checkpoint.parent / LOG_NAME).exists():
        history = read_log(args.checkpoint.parent / LOG_NAME)
    files.append(figures.bound_curve(history, out / "bound.png"))
    for f in files:
        if f is not None:
            print(f)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = extras.missing_message(args)
    if missing:  # before any work: not a traceback after training
        print(f"fastaevb {args.command}: error: {missing}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except (D.DataError, ckpt.CheckpointError, ValueError, RuntimeError) as exc:
        print(f"fastaevb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastaevb {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
