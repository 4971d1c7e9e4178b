"""Width (load) x loss (Zhou et al., NeurIPS 2022, "Are all losses created equal: a neural collapse perspective"):
cross-entropy, label smoothing, focal loss and MSE on a scaled one-hot, each a group of its own, on MNIST-1D MLPs;
test accuracy and neural collapse (NC1-NC4) per loss, along training (tracked epochs: the paper's width x training
length heat map of |acc(loss) - acc(CE)|, `lljax.loss_gaps`: loss_gaps.csv, figures/loss_gaps*.png and a section
of report.md).

    python experiments/losses.py --preset quick --out runs/losses      # about 1.5 minutes on a 2-core CPU
    python experiments/losses.py --preset default --out runs/losses    # 3.5 minutes (211 s cold, quiet)

The losses' parameters are the paper's: label smoothing 0.05 (--label-smoothing), focal gamma 3 (--focal-gamma),
MSE target scale 15 (--mse-scale). In a grid over losses the phase rule's "fitted" reads the training error
(below --fitted-error), the same for every loss. What it showed on this machine: README "The loss as a knob".
"""
import sys

from lljax import cli

COMMON = dict(model="mlp", batch_sizes=(64,), lrs=(0.05,), weight_decays=(5e-4,), seeds=2,
              losses=("cross_entropy", "label_smoothing", "focal", "mse_onehot"),
              metrics=("loss", "collapse", "cka", "l2"), track_metrics=("collapse", "cka"), cka_samples=512)

PRESETS = {
    # 3 widths x 4 losses x 2 seeds, tracked at 10, 20, 40 epochs (12 groups, a program each)
    "quick": dict(COMMON, widths=(8, 128, 512), epochs=40, track_epochs=(10, 20)),
    # 5 widths x 4 losses x 2 seeds, tracked at 10, 25, 50, 100 epochs (20 groups); width 1024 was dropped before
    # the first run: 35 s of training per 10 epochs of one loss (a probe, load 1-4), so ~23 minutes for 4 x 100
    "default": dict(COMMON, widths=(4, 8, 32, 128, 512), epochs=100, track_epochs=(10, 25, 50)),
}


if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
