"""Width (load) x SAM radius (temperature): does sharpness-aware minimisation's radius move the phase boundaries
the way weight decay and batch size do? MNIST-1D MLPs trained with SGD + SAM (Foret et al. 2021), one radius per
member inside one vmapped program (rho = 0: plain training).

    python experiments/sam_rho.py --preset quick --out runs/sam_rho      # about 1.5 minutes on a 2-core CPU
    python experiments/sam_rho.py --preset default --out runs/sam_rho    # about 3.5 minutes

Both presets run 'loss', 'hessian', 'curves', 'cka', 'l2' (the phases and the local metrics): do larger radii lower
the top Hessian eigenvalue and the trace, raise connectivity and CKA, move points between phases? What it showed
on this machine: README "SAM radius as a knob".
"""
import sys

from lljax import cli

COMMON = dict(model="mlp", batch_sizes=(64,), lrs=(0.1,), metrics=("loss", "hessian", "curves", "cka", "l2"),
              hessian_samples=500, hessian_density_runs=0, curve_points=11)

PRESETS = {
    # 3 widths x 4 radii x 2 seeds (a SAM step costs two gradients: training about twice width_lr's)
    "quick": dict(COMMON, widths=(8, 32, 128), sam_rhos=(0.0, 0.05, 0.1, 0.2), seeds=2, epochs=30, curve_epochs=30),
    # 5 widths x 5 radii x 2 seeds
    "default": dict(COMMON, widths=(4, 8, 32, 128, 256), sam_rhos=(0.0, 0.02, 0.05, 0.1, 0.2), seeds=2, epochs=40,
                    curve_epochs=40),
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
