"""Export a trained agent's deterministic policy as a standalone file.

``toolkit export RUN --format torchscript|onnx`` writes a file that maps a batch of
observations ``[B, *obs_shape]`` to the actions ``toolkit eval`` takes, i.e.
``agent.act(obs, deterministic=True)`` of the run's latest checkpoint, on the CPU. It loads
with plain ``torch.jit.load`` or ``onnxruntime.InferenceSession``; no toolkit is needed.

Observations go in as the agent sees them: float32 (uint8 for pixel observations); actions
come out float32 (continuous) or int64 (discrete). What the file expects is recorded in it
(TorchScript: the ``policy.json`` extra file; ONNX: metadata properties).

Agents that carry state from one action to the next (the offline sequence models, which
condition on the episode so far) have no single-observation policy and are refused, as are
model runs, which have no policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
#: Rows of the example batch the policy is traced with (any batch size works afterwards).
EXAMPLE_BATCH = 4


def default_export_path(run_dir: Path, fmt: str) -> Path:
    """``RUN/policy.pt`` or ``RUN/policy.onnx``."""
    return Path(run_dir) / f"policy{FORMATS[fmt]}"


def load_policy(run_dir: Path) -> tuple[Any, Any]:
    """The run's trained agent on the CPU (built as :func:`toolkit.session.open_trained_run`
    builds it) and its session; refuses runs whose policy cannot be exported."""
    from toolkit.agent import Agent
    from toolkit.external import refuse_external
    from toolkit.runs import CHECKPOINT, load_settings
    from toolkit.session import open_trained_run

    run_dir = Path(run_dir)
    settings = load_settings(run_dir)
    if settings.model:
        raise ToolkitError(f"{run_dir} is a {settings.model} model run; only agent runs have a policy to export.")
    if not (run_dir / CHECKPOINT).is_file():
        raise ToolkitError(f"{run_dir} has no checkpoint yet ({CHECKPOINT}); train it first.")
    session, _ = open_trained_run(run_dir, device="cpu")
    refuse_external(session.agent, settings.agent, "export")
    # Memoryless agents keep the base class's no-op; sequence models clear their context there.
    if getattr(type(session.agent), "start_episode", Agent.start_episode) is not Agent.start_episode:
        raise ToolkitError(f"{settings.agent} acts on the episode so far (a sequence model), so it has no "
                           "single-observation policy to export.")
    return session.agent, session


def example_observations(session: Any, batch: int = EXAMPLE_BATCH, seed: int = 0) -> Any:
    """A batch of observations from the run's observation space, as the agent sees them."""
    from toolkit.agent import observations_tensor

    env = session.make_env()
    try:
        space = env.observation_space
        space.seed(seed)
        return observations_tensor([space.sample() for _ in range(batch)], "cpu")
    finally:
        env.close()


def _policy_module(agent: Any) -> Any:
    import torch

    class DeterministicPolicy(torch.nn.Module):
        """``obs -> agent.act(obs, deterministic=True)``."""

        def __init__(self) -> None:
            super().__init__()
            self._agent = agent
            # The agent's networks as submodules, frozen: the trace holds their weights as
            # parameters (a tensor that requires grad cannot be a traced constant).
            self.networks = torch.nn.ModuleDict({name: value for name, value in vars(agent).items()
                                                 if isinstance(value, torch.nn.Module)})
            self.networks.requires_grad_(False)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self._agent.act(obs, deterministic=True)

    return DeterministicPolicy().eval()


def export_run(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    """Write the run's deterministic policy as ``fmt`` (torchscript or onnx) to ``out``
    (default ``RUN/policy.pt`` / ``RUN/policy.onnx``); return the path."""
    import torch

    if fmt not in FORMATS:
        raise ToolkitError(f"Unknown export format '{fmt}'; use torchscript or onnx.")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else default_export_path(run_dir, fmt)
    agent, session = load_policy(run_dir)
    obs = example_observations(session)
    policy = _policy_module(agent)
    with torch.no_grad():
        actions = policy(obs)
    info = {
        "run": run_dir.name,
        "agent": session.settings.agent,
        "env": session.settings.env,
        "observation_shape": list(obs.shape[1:]),
        "observation_dtype": str(obs.dtype).replace("torch.", ""),
        "action_shape": list(actions.shape[1:]),
        "action_dtype": str(actions.dtype).replace("torch.", ""),
        "input": "obs [batch, *observation_shape]",
        "output": "actions [batch, *action_shape], deterministic",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            # The action space's scale and bias become constants, as they should; and
            # torch.jit.trace's deprecation notice is not the user's to act on.
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(policy, obs, check_trace=False)
            torch.jit.save(traced, str(out), _extra_files={"policy.json": json.dumps(info)})
    else:
        _export_onnx(policy, obs, out, info)
    return out


def _export_onnx(policy: Any, obs: Any, out: Path, info: dict[str, Any]) -> None:
    import torch

    try:
        import onnx
    except ImportError:
        raise ToolkitError("ONNX export needs the onnx package: pip install 'toolkit-rl[export]'.") from None
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(policy, (obs,), str(out), input_names=["obs"], output_names=["actions"],
                          dynamic_axes={"obs": {0: "batch"}, "actions": {0: "batch"}}, dynamo=False)
    model = onnx.load(str(out))
    for key, value in info.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value) if not isinstance(value, str) else value
    onnx.save(model, str(out))
