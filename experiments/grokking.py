"""The grokking phase diagram beside the loss-landscape taxonomy: the built-in Transformer on modular addition,
training fraction (load) x weight decay (temperature), Liu et al.'s four phases (comprehension, grokking,
memorization, confusion) from the steps to fit and to generalise, Yang et al.'s five from the landscape.

    python experiments/grokking.py --preset quick --out runs/grokking      # about 1-2 minutes on a 2-core CPU
    python experiments/grokking.py --preset default --out runs/grokking    # about 15-20 minutes
    python experiments/grokking.py --preset nanda --out runs/nanda         # Nanda et al.'s setting (hours here)

Every preset trains full-batch (one compiled program for the whole grid: the training fractions are per-member
masks), AdamW with betas (0.9, 0.98), a constant learning rate after 10 warm-up steps, and records training and
test accuracy every `--milestones-every` steps inside the training loop. How the quick and default settings were
chosen (measured on this CPU, README "The grokking phase diagram"): p = 23, d_model 32 and 1500 full-batch steps
at lr 3e-3 is the smallest setting found where a 3 x 3 grid shows memorization at weight decay 0.1, grokking at
weight decay 1 with enough data and confusion at weight decay 10, in about a minute; Liu et al.'s gap threshold
(1e3 steps of their 1e5-step budget, about their steps to fit) is scaled to these runs' fitting times (about 100
steps): 200 steps.
"""
import sys

from lljax import cli

COMMON = dict(dataset="modular", model="transformer", batch_sizes=(0,), optimizer="adamw", momentum=(0.9,),
              beta2=0.98, schedule="constant", warmup_steps=10, lrs=(3e-3,), task_test_fraction=0.3)

PRESETS = {
    # <= 2 minutes: Liu's phases (memorization, grokking, confusion) on a 3 x 3 grid, and Yang's from CKA and
    # cheap curves
    "quick": dict(COMMON, task_p=23, widths=(32,), data_fractions=(0.4, 0.7, 1.0), weight_decays=(0.1, 1.0, 10.0),
                  seeds=2, epochs=1500, milestones_every=25, milestones_gap=200,
                  metrics=("loss", "curves", "cka", "l2"), curve_epochs=40, curve_batch_size=128, curve_lr=0.05,
                  cka_samples=256),
    # <= 20 minutes: a finer grid, three seeds, and the landscape tracked through the transition
    "default": dict(COMMON, task_p=23, widths=(32,), data_fractions=(0.4, 0.55, 0.7, 0.85, 1.0),
                    weight_decays=(0.1, 0.3, 1.0, 3.0, 10.0), seeds=3, epochs=2000, milestones_every=25,
                    milestones_gap=200, metrics=("loss", "hessian", "curves", "cka", "l2", "spectra"),
                    hessian_samples=512, hessian_lanczos_steps=16, hessian_density_runs=0, curve_epochs=40,
                    curve_batch_size=128, curve_lr=0.05, cka_samples=256, spectra_bootstrap=0,
                    track_epochs=(100, 250, 500, 1000), track_metrics=("hessian", "curves", "cka", "l2", "spectra")),
    # Nanda et al. (2023): one block, d_model 128, 4 heads, d_mlp 512, no LayerNorm, p = 113, 30% of the pairs,
    # AdamW lr 1e-3, weight decay 1 (and 0, where they see no grokking), full batch; grokking after about 10^4
    # steps. For an accelerator or a long run.
    "nanda": dict(COMMON, task_p=113, task_test_fraction=0.7, widths=(128,), transformer_heads=4,
                  transformer_mlp_width=512, transformer_layer_norm=False, lrs=(1e-3,), weight_decays=(0.0, 1.0),
                  data_fractions=(1.0,), seeds=2, epochs=20000, milestones_every=100, metrics=("loss",)),
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
