"""Routers: decide per token which modules run, and with what gate."""

from .base import Routing, density_loss
from .budget import BudgetController
from .threshold import ThresholdRouter
from .topk import TopKRouter, capacity_slots

__all__ = ["BudgetController", "Routing", "ThresholdRouter", "TopKRouter", "capacity_slots", "density_loss"]
