"""The 'robust' family (adversarial robustness, Zhao et al., ICLR 2020) and its companion 'robust_curves'.

robust (member, off by default): on the first `--robust-samples` test examples, each model attacked by PGD
(`lljax.robustness.pgd_attack`: --robust-norm ball of radius --robust-epsilon, --robust-steps steps of
--robust-step-size, a random start), BatchNorm in inference mode: the adversarial test loss and accuracy
(`robust_loss`, `robust_acc`), and the top eigenvalue of the Hessian of each example's loss with respect to its
input (`lljax.robustness.input_hessian_top_eig`), its mean and max over the examples (`input_hessian_top_eig`,
`input_hessian_top_eig_max`).

robust_curves (pair; computed when both 'robust' and 'curves' are): the curves family's fitted Bezier curve of
each pair, refitted identically (same options, same random stream: twice the fitting cost), and at every t of its
grid, BatchNorm statistics recomputed as for the clean error, the same attack and input Hessian on the same test
examples: clean and adversarial error and loss along t, `mc_robust` (the mode-connectivity formula on the
adversarial error: negative, a robustness barrier), and the Pearson and Spearman correlations along t between the
adversarial loss and the mean input-Hessian eigenvalue (Zhao et al.'s observation that they track each other).

Token inputs cannot be perturbed: the family says so in one line and returns nothing; the rest of the run goes on.
"""
from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lljax import curves, figures, grid, models, options, robustness, store, tables
from lljax.metrics import curves as curve_family
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared

CLIPS = ("none", "unit", "data")


@dataclasses.dataclass(frozen=True)
class RobustOptions:
    epsilon: float = options.option(0.1, "attack radius in the inputs' own units (MNIST-1D is standardised: 0.1 "
                                         "standard deviations per feature for linf; Zhao et al.'s images in [0, 1]: "
                                         "8/255)", low=0)
    steps: int = options.option(10, "PGD steps (Zhao et al.: 10; FGSM: 1 step of epsilon, --robust-random-start "
                                    "false)", low=1)
    step_size: float | None = options.option(None, "PGD step size (default: epsilon / 4, Zhao et al.'s 2/255 for "
                                                   "8/255)", low=0)
    norm: str = options.option("linf", "attack ball: linf or l2", choices=robustness.NORMS)
    samples: int = options.option(256, "test examples attacked per model (the first ones)", low=1)
    random_start: bool = options.option(True, "start from a uniformly random point of the ball (Madry et al.)")
    clip: str = options.option("none", "box the attacked inputs stay in: none (normalised data such as MNIST-1D have "
                                       "no box), unit ([0, 1]: raw images), data (the training inputs' minimum and "
                                       "maximum)", choices=CLIPS)
    hessian_steps: int = options.option(20, "Lanczos steps per example for the input-Hessian top eigenvalue (capped "
                                            "at the input's size, where it is exact)", low=1)

    @property
    def resolved_step_size(self) -> float:
        return self.epsilon / 4 if self.step_size is None else self.step_size


def float_inputs(x) -> bool:
    return bool(jnp.issubdtype(x.dtype, jnp.floating))


def _box(o: RobustOptions, x_train):
    if o.clip == "unit":
        return 0.0, 1.0
    if o.clip == "data":
        return jnp.min(x_train), jnp.max(x_train)
    return None


def measure(logits_fn, x, y, o: RobustOptions, key, loss, x_train) -> dict:
    """The adversarial loss and error, the clean loss and error and the input-Hessian eigenvalues (S,) of one
    model `logits_fn` on the examples (x, y)."""
    attacked = robustness.pgd_attack(logits_fn, x, y, epsilon=o.epsilon, steps=o.steps,
                                     step_size=o.resolved_step_size, norm=o.norm,
                                     key=grid.stream(key, "attack") if o.random_start else None,
                                     clip=_box(o, x_train), loss=loss)
    adv_loss, adv_err = robustness.attack_metrics(logits_fn, attacked, y, loss)
    clean_loss, clean_err = robustness.attack_metrics(logits_fn, x, y, loss)
    eig = robustness.input_hessian_top_eig(logits_fn, x, y, key=grid.stream(key, "input_hessian"),
                                           num_steps=o.hessian_steps, loss=loss)
    return dict(adv_loss=adv_loss, adv_err=adv_err, clean_loss=clean_loss, clean_err=clean_err, eig=eig)


def _samples(o: RobustOptions, shared: Shared):
    n = min(o.samples, shared.x_test.shape[0])
    return shared.x_test[:n], shared.y_test[:n]


def robust_family(ctx: Context, shared: Shared, member: Member, key) -> dict:
    if not float_inputs(shared.x_test):
        return {}
    x, y = _samples(ctx.options, shared)
    logits = lambda v: models.apply(ctx.model, member.params, member.batch_stats, v)[0]
    m = measure(logits, x, y, ctx.options, key, ctx.loss, shared.x_train)
    out = {"robust_loss": m["adv_loss"], "robust_acc": 1 - m["adv_err"], "input_hessian_top_eig": jnp.mean(m["eig"]),
           "input_hessian_top_eig_max": jnp.max(m["eig"])}
    return {k: v for k, v in out.items() if k in columns(ctx)}


def tokens(ctx: Context) -> bool:
    return "vocab_size" in dict(ctx.model.extras)


def columns(ctx: Context) -> tuple[str, ...]:
    if tokens(ctx):
        return ()
    return ("robust_loss", *(("robust_acc",) if ctx.loss.error else ()), "input_hessian_top_eig",
            "input_hessian_top_eig_max")


def check(ctx: Context, params, batch_stats, x) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        print("lljax: metric family 'robust' needs float inputs (no attack on tokens): skipped, the rest of the run "
              "goes on", file=sys.stderr)


# ------------------------------------------------------------------------------------------ along curves

def pearson(a, b) -> jax.Array:
    a, b = a - jnp.mean(a), b - jnp.mean(b)
    return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a ** 2) * jnp.sum(b ** 2))


def ranks(a) -> jax.Array:
    """(T,) ranks from 0, ties given their average rank (as scipy.stats.rankdata - 1)."""
    below = jnp.sum(a[None, :] < a[:, None], axis=1)
    equal = jnp.sum(a[None, :] == a[:, None], axis=1)
    return below + (equal - 1) / 2


def spearman(a, b) -> jax.Array:
    return pearson(ranks(a).astype(a.dtype), ranks(b).astype(b.dtype))


ALONG = ("clean_err", "clean_loss", "adv_err", "adv_loss", "input_eig")


def robust_curve_family(ctx: Context, shared: Shared, a: Member, b: Member, key) -> dict:
    curve_options, o = ctx.options
    if not float_inputs(shared.x_test):
        return {}
    fitted, _ = curve_family.fit_pair(ctx, curve_options, shared, a, b, key)
    n = ctx.subset_size
    rows = a.view.order[:n]
    x, y = _samples(o, shared)
    dtype = jax.tree.leaves(a.params)[0].dtype
    ts = jnp.asarray(curves.default_ts(curve_options.points), dtype)
    attack_key, stats_key = grid.stream(key, "robust"), grid.stream(key, "batch_stats")

    def at(t):
        w = curves.curve_point(fitted, t)
        stats = curves.recompute_batch_stats(ctx.model, w, a.batch_stats, shared.x_train,
                                             chunk_size=ctx.eval_batch_size, rows=rows, rng=stats_key)
        logits = lambda v: models.apply(ctx.model, w, stats, v)[0]
        m = measure(logits, x, y, o, attack_key, ctx.loss, shared.x_train)
        return jnp.stack([m["clean_err"], m["clean_loss"], m["adv_err"], m["adv_loss"], jnp.mean(m["eig"])])

    values = jax.lax.map(at, ts).T
    along = dict(zip(ALONG, values))
    error = ctx.loss.error is not None
    mc = curves.mode_connectivity
    out = {"mc_robust": mc(along["adv_err"] if error else along["adv_loss"]), "mc_robust_loss": mc(along["adv_loss"]),
           "robust_eig_pearson": pearson(along["adv_loss"], along["input_eig"]),
           "robust_eig_spearman": spearman(along["adv_loss"], along["input_eig"]),
           **{f"robust_curve_{k}": v for k, v in along.items()}}
    return out


def curve_columns(ctx: Context) -> tuple[str, ...]:
    return () if tokens(ctx) else ("mc_robust", "mc_robust_loss", "robust_eig_pearson", "robust_eig_spearman")


def robust_curve_rows(results) -> list[dict]:
    """One row per (pair, t): the point's knobs, both seeds, t, and the clean and adversarial error and loss and
    the mean input-Hessian eigenvalue on the attacked test examples along the fitted curve."""
    rows = []
    for group, arrays in zip(results.groups, results.group_metrics):
        if "pair/robust_curve_adv_loss" not in arrays:
            continue
        ts = curves.default_ts(arrays["pair/robust_curve_adv_loss"].shape[1])
        for p, (a, b) in enumerate(zip(arrays["pair/a"], arrays["pair/b"])):
            ma, mb = results.members[group.members[a]], results.members[group.members[b]]
            for k, t in enumerate(ts):
                row = grid.knob_row(ma)
                row.update(seed_a=ma.seed, seed_b=mb.seed, t=float(t))
                row.update({f"robust_curve_{name}": arrays[f"pair/robust_curve_{name}"][p, k] for name in ALONG})
                rows.append(row)
    return rows


def robust_curve_outputs(results, tables_, figures_dir) -> list:
    """robust_curves.csv, and the clean and adversarial test error (loss) along the fitted curve, one panel per
    grid point of a representative set."""
    store.write_atomic(figures_dir.parent / "robust_curves.csv", tables.to_csv(robust_curve_rows(results)))
    kind = "err" if results.error_metric else "loss"
    what = "error" if kind == "err" else "loss"
    along = {name: results.arrays_by_point("pair", f"robust_curve_{name}") for name in (f"clean_{kind}", f"adv_{kind}")}

    def draw(point):
        if not along[f"adv_{kind}"].get(point):
            return None
        mean = {k: np.mean(v[point], axis=0) for k, v in along.items()}
        ts = curves.default_ts(len(mean[f"adv_{kind}"]))
        return [(ts, mean[f"clean_{kind}"], f"clean test {what}", {"lw": 1.2}),
                (ts, mean[f"adv_{kind}"], f"adversarial test {what}", {"lw": 1.2, "ls": "--"})]

    return figures.point_panels(results, tables_.grid, draw, figures_dir, "robust_along_t", "t", what,
                                f"clean and adversarial test {what} along the fitted curve (mean over pairs)")


FAMILY = Family(
    "robust", "member", robust_family, options=RobustOptions, columns=columns,
    heatmaps=(Heatmap("robust_acc", "adversarial test accuracy"),
              Heatmap("robust_loss", "adversarial test loss"),
              Heatmap("input_hessian_top_eig", "log10 input-Hessian top eigenvalue (mean over examples)", log10=True)),
    correlated=("robust_acc", "input_hessian_top_eig"), cost=0.05, default=False, check=check, skip=tokens,
    kind_of_metric="robustness")

CURVES_FAMILY = Family(
    "robust_curves", "pair", robust_curve_family, columns=curve_columns, companion_of=("curves", "robust"),
    stream="curves", skip=tokens,
    heatmaps=(Heatmap("mc_robust", "robustness barrier: mode connectivity of the adversarial test error (<0: barrier)",
                      center=0.0),
              Heatmap("robust_eig_spearman", "Spearman along t: adversarial loss vs input-Hessian eigenvalue",
                      center=0.0)),
    correlated=("mc_robust",), cost=1.2, default=False, static_subset=True, outputs=robust_curve_outputs,
    kind_of_metric="robustness")
