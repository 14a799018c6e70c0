"""recbole-navigen: NaviGen and TIGER as RecBole models, with a runner that compares them to RecBole's.

Importing the package applies the RecBole compatibility shims of `recbole_navigen.compat` once.
"""

from recbole_navigen import compat

compat.apply()

from recbole_navigen.config import Config  # noqa: E402
from recbole_navigen.utils import get_model, get_trainer  # noqa: E402

__all__ = ["Config", "get_model", "get_trainer"]
__version__ = "0.1.0"
