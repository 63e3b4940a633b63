"""Simulators that write real MeasurementSets with known, recorded truth (public: users can
test their own reductions with them), and small in-memory datasets for unit tests."""

from ._layout import SimulatedEB
from .interferometer import integrations_for_size, simulate_interferometer
from .single_dish import simulate_single_dish
from .vla_switched_power import simulate_vla_switched_power as simulate_vla_switched_power

__all__ = [
    "SimulatedEB",
    "integrations_for_size",
    "simulate_interferometer",
    "simulate_single_dish",
]
