"""The plugin's recommenders (NaviGen, TIGER), each a RecBole model class exported here by name.

`recbole_navigen.get_model` looks here first and falls back to RecBole's own models.
"""

from recbole_navigen.model.navigen import NaviGen
from recbole_navigen.model.tiger import TIGER

__all__ = ["NaviGen", "TIGER"]
