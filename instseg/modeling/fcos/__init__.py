from .fcos import FCOS, FCOSPositives, FCOSPredictions
from .head import FCOSHead

__all__ = ["FCOS", "FCOSHead", "FCOSPositives", "FCOSPredictions"]
