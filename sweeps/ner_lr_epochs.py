"""Learning rate x epochs for configs/ner.py, including its defaults (lr 1e-4, 10 epochs): 4 trials.

    python -m jaxft.main sweep --config configs/ner.py --space sweeps/ner_lr_epochs.py --workdir runs/sweep

Measured (README): dev F1 0.388 / 0.462 (default) / 0.363 / 0.499 for (1e-4, 5), (1e-4, 10), (2e-4, 5),
(2e-4, 10); best (2e-4, 10 epochs) scored test F1 0.484 against the default's 0.440.

For a random search, swap in e.g. "optim.learning_rate": loguniform(3e-5, 3e-4) and pass --trials N.
"""

from jaxft.sweep_space import grid


def space():
    return {
        "optim.learning_rate": grid([1e-4, 2e-4]),
        "train.num_epochs": grid([5, 10]),
    }
