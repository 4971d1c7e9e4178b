"""Data-free model selection (Yang et al. 2023, KDD): do the weight spectra of a population of Transformers rank
them by test accuracy without data, within one-hyperparameter slices and across, and do the truncated power
law's lambda (E-TPL) and the exponential's (EXP) rank better than the power-law alpha? The built-in Transformer
on modular addition, training fraction x width x learning rate, the spectra tracked along training.

    python experiments/model_selection.py --preset quick --out runs/model_selection     # 79 s at load 4-5
    python experiments/model_selection.py --preset default --out runs/model_selection   # 7 minutes (424 s cold)

Read correlations.csv (one row per data-free metric and target: pooled Spearman/Kendall, per-knob slice
medians, Jiang et al.'s granulated Kendall, the time-wise Spearman along the tracked epochs, Simpson flags) and
the report's section "Correlations by one-knob slices". AdamW with weight decay 1 as in the grokking study, so
that the grid spans memorising and generalising models; every member full-batch.
"""
import sys

from lljax import cli

COMMON = dict(dataset="modular", model="transformer", batch_sizes=(0,), optimizer="adamw", momentum=(0.9,),
              beta2=0.98, schedule="constant", warmup_steps=10, weight_decays=(1.0,), task_test_fraction=0.3,
              task_p=23, metrics=("loss", "spectra"), spectra_bootstrap=0, track_metrics=("spectra",))

PRESETS = {
    # one width (one compiled group): training fraction x lr, a smoke run of the study
    "quick": dict(COMMON, data_fractions=(0.4, 0.7, 1.0), widths=(32,), lrs=(1e-3, 3e-3), seeds=2, epochs=600,
                  track_epochs=(300,)),
    "default": dict(COMMON, data_fractions=(0.4, 0.6, 0.8, 1.0), widths=(32, 48, 64), lrs=(1e-3, 2e-3, 4e-3),
                    seeds=2, epochs=1000, track_epochs=(250, 500)),
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
