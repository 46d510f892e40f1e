"""Ray: distributed rollouts, data-parallel training and sweeps (imported only when used)."""
