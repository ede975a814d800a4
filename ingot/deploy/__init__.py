"""NIM-style deployment: `ingot serve CHECKPOINT_OR_PRESET` picks a build profile for the machine it
runs on, builds it once into the cache and serves it; later starts reuse the cached engine.

    machine.py   the device this process sees: GPU model and count, or the CPU and its RAM
    profiles.py  candidate build profiles for that machine (the planner's figures on a GPU it
                 knows), and which one is chosen and why
    cache.py     the cache key (checkpoint fingerprint, device, profile, ingot version) and the
                 build-once-then-reuse lookup
"""

from ingot.deploy.cache import deploy, deployed_engine
from ingot.deploy.machine import Machine, detect_machine
from ingot.deploy.profiles import Profile, candidate_profiles, choose_profile

__all__ = ["Machine", "deploy", "Profile", "candidate_profiles", "choose_profile", "deployed_engine", "detect_machine"]
