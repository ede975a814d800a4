"""Tests of the sizing planner (ingot/plan): CPU only, plus one headless-browser test."""
