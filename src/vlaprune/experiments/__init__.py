"""Experiments: protocols, sweeps, the results store, reports and the demo."""
