"""The 'loss' family (always computed): training loss and accuracy on each member's own view (subset and
labels), test loss and accuracy on the clean test set, BatchNorm in inference mode; accuracies in [0, 1],
absent for a loss without an error metric (regression)."""
from __future__ import annotations

from lljax import train
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


def loss_metrics(ctx: Context, shared: Shared, member: Member, key) -> dict:
    evaluate = lambda x, y, w: train.evaluate(ctx.model, member.params, member.batch_stats, x, y, w,
                                              ctx.eval_batch_size, ctx.loss)
    train_loss, train_acc = evaluate(shared.x_train, member.view.labels, member.view.mask)
    test_loss, test_acc = evaluate(shared.x_test, shared.y_test, None)
    out = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
           "diverged": member.diverged}
    return {k: v for k, v in out.items() if k in columns(ctx)}


def columns(ctx: Context) -> tuple[str, ...]:
    if ctx.loss.error is None:
        return "train_loss", "test_loss", "diverged"
    return "train_loss", "train_acc", "test_loss", "test_acc", "diverged"


FAMILY = Family(
    "loss", "member", loss_metrics, columns=columns,
    heatmaps=(Heatmap("train_loss", "training loss"), Heatmap("train_acc", "training accuracy"),
              Heatmap("test_loss", "test loss"), Heatmap("test_acc", "test accuracy")),
    correlated=("train_loss",), cost=0.02, kind_of_metric="training")
