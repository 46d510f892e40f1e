"""A point in the plane that must be steered to the origin."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class PointMassEnv(gym.Env):
    """Observation: position (x, y) in [-1, 1]^2. Action: a velocity in [-1, 1]^2, scaled by
    0.1. Reward: minus the distance to the origin. Episodes are cut at 50 steps by the
    registered time limit; a return near 0 means the point went straight home."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.render_mode = render_mode
        self.position = np.zeros(2, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        return self.position.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        self.position = np.clip(self.position + 0.1 * action, -1.0, 1.0).astype(np.float32)
        reward = -float(np.linalg.norm(self.position))
        return self.position.copy(), reward, False, False, {}

    def render(self) -> np.ndarray:
        frame = np.full((64, 64, 3), 255, np.uint8)
        x, y = ((self.position + 1.0) * 31.5).astype(int)
        frame[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = (200, 30, 30)
        frame[31:33, 31:33] = 0
        return frame
