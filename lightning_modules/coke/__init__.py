"""CoKe, online constrained k-means: `method.py` is the paper's method, the other files its departures and
variants (compose.py builds the ones the config names), `config.py` the typed config."""
from lightning_modules.coke.config import CoKeConfig
from lightning_modules.coke.method import CoKe

__all__ = ["CoKe", "CoKeConfig"]
