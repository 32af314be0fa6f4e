"""CoKe, online constrained k-means: `method.py` is the paper's method; `parts.py` types its slots, which the other
files fill with the paper's object or a departure's (compose.py builds the ones the config names); `config.py` is the
typed config and `rules.py` every rule on combining its options."""
from lightning_modules.coke.config import CoKeConfig
from lightning_modules.coke.method import CoKe

__all__ = ["CoKe", "CoKeConfig"]
