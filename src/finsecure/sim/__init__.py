"""The bank-day simulator: a seeded world, everyday behaviour in four domains, and labelled attack campaigns.

Use it as a stream (`SimulatorSource`, also live with ``realtime=True``), or write a whole run to a file
with its ground truth (`simulate`, or ``finsecure simulate`` on the command line). The same seed gives the
same events, byte for byte.

Example
-------
>>> from finsecure.sim import SimConfig, simulate
>>> result = simulate(SimConfig(customers=1_000, duration_s=900, seed=1), collect=True)
>>> sorted(result.events_by_domain), result.labelled > 0
(['auth', 'cloud', 'network', 'payment'], True)
"""

from finsecure.sim.config import CampaignType, SimConfig, parse_duration
from finsecure.sim.source import SimProgress, SimulationResult, SimulatorSource, simulate
from finsecure.sim.truth import CampaignTruth, GroundTruth, StepTruth, load_truth
from finsecure.sim.world import World, build_world
from finsecure.sim.writers import read_events

__all__ = [
    "CampaignTruth",
    "CampaignType",
    "GroundTruth",
    "SimConfig",
    "SimProgress",
    "SimulationResult",
    "SimulatorSource",
    "StepTruth",
    "World",
    "build_world",
    "load_truth",
    "parse_duration",
    "read_events",
    "simulate",
]
