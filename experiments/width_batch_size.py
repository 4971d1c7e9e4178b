"""The paper's main figure: width (load) x batch size (temperature), Yang et al. 2021 Figure 2.

    python experiments/width_batch_size.py --preset quick --out runs/width_batch_size      # a few minutes, CPU
    python experiments/width_batch_size.py --preset default --out runs/width_batch_size
    python experiments/width_batch_size.py --preset paper --data-dir DIR --out runs/paper  # GPUs and CIFAR-10

`paper` is the paper's ResNet18 / CIFAR-10 grid (13 widths 2..128 x 15 batch sizes 16..1024, 5 seeds, 100
epochs, every metric: 975 models); `DIR` holds `cifar-10-batches-py`. Expect the wide models at moderate batch
size to be fitted, connected and similar (IV-B) and the narrow ones to show barriers (I / III).
"""
import sys

from lljax import cli

PAPER_WIDTHS = (2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128)
PAPER_BATCH_SIZES = (16, 19, 24, 27, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024)

PRESETS = {
    "quick": dict(model="mlp", widths=(4, 16, 64), batch_sizes=(16, 64, 256), lrs=(0.05,), seeds=2, epochs=20,
                  hessian_samples=500),
    "default": dict(model="mlp", widths=(2, 4, 8, 16, 32, 64, 128), batch_sizes=(16, 32, 64, 128, 256, 512),
                    lrs=(0.05,), seeds=3, epochs=60),
    "paper": dict(dataset="cifar10", model="resnet18", widths=PAPER_WIDTHS, batch_sizes=PAPER_BATCH_SIZES,
                  lrs=(0.05,), weight_decays=(5e-4,), seeds=5, epochs=100, eval_batch_size=500),
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
