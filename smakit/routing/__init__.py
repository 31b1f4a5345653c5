"""Routers: decide per token which modules run, and with what gate; and how to observe them."""

from .base import Routing, density_loss
from .budget import BudgetController, accumulate_budgets
from .stats import AuxLosses, RoutingStats, collect_aux_losses, collect_routing_stats, summarize_routing
from .threshold import ThresholdRouter
from .topk import TopKRouter, capacity_slots

__all__ = ["AuxLosses", "BudgetController", "Routing", "RoutingStats", "ThresholdRouter", "TopKRouter",
           "accumulate_budgets", "capacity_slots", "collect_aux_losses", "collect_routing_stats", "density_loss", "summarize_routing"]
