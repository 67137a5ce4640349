"""recbole_cdsr: cross-domain sequential recommendation on RecBole."""

from recbole_cdsr import _compat  # noqa: F401  (must run before recbole is imported)

__version__ = "0.1.0"
