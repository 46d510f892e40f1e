"""Entry-point targets of the RLlib bridge: settings and specs of rllib-ppo, -sac, -dqn, -appo.

This module is imported by ``toolkit list``: it stays light (dataclasses and specs; no torch,
no Ray). The agent in :mod:`toolkit_bridges.rllib` imports RLlib when it is built.

Every field of a config is the keyword of RLlib's ``AlgorithmConfig.training(...)`` of the same
name, with RLlib's default (Ray 2.x, new API stack: RLModule, Learner, EnvRunner), except:

* ``hidden_sizes`` is the RLModule's ``fcnet_hiddens`` (``DefaultModelConfig``);
* ``replay_buffer_capacity`` is ``replay_buffer_config["capacity"]``;
* DQN's ``initial_epsilon``, ``final_epsilon`` and ``epsilon_timesteps`` make RLlib's
  ``epsilon`` schedule ``[(0, initial), (timesteps, final)]`` (the names of RLlib's old
  ``EpsilonGreedy`` exploration config);
* ``store_buffer_in_checkpoints`` defaults to True (RLlib: False): a resumed toolkit run
  continues as the uninterrupted run would, so the replay buffer is part of the checkpoint, as
  it is for the toolkit's own off-policy agents. RLlib's new stack leaves the buffer out of
  ``save_to_path``; the bridge writes it beside RLlib's checkpoint.

What is not a training setting is the bridge's: ``--workers`` is ``num_env_runners``,
``--envs-per-worker`` ``num_envs_per_env_runner``, ``--gpus-per-worker``
``num_gpus_per_env_runner``, ``--device cuda`` one local GPU learner, ``--seed`` RLlib's seed.
The learner always runs in the driver (``num_learners=0``; APPO's default is one remote
learner actor, which on one machine only costs a process) and RLlib's time-based minimum
iteration length is off (``min_time_s_per_iteration=0``; SAC 1 s and APPO 10 s by default),
because the toolkit asks for chunks of env steps, not of seconds. RLlib's minimum env steps
per iteration stay (DQN: 1,000; SAC: 100; PPO and APPO: one train batch or fragment), so a
chunk of training overshoots to a whole number of iterations; the true count is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from toolkit.config import option
from toolkit.registry import AgentSpec

#: The extra of this distribution that installs RLlib (``pip install 'toolkit-rl[rllib]'``).
EXTRA = "rllib"


@dataclass(frozen=True)
class RLlibPPOConfig:
    """PPO settings as RLlib's ``PPOConfig.training()`` names them, with RLlib's defaults."""

    lr: float = option(5e-5, "Adam learning rate (RLlib: 5e-5; its tuned CartPole example uses 3e-4).", gt=0)
    gamma: float = option(0.99, "Discount factor.", gt=0, le=1)
    train_batch_size_per_learner: int = option(4000, "Env steps sampled per training iteration (one PPO batch).", ge=1)
    minibatch_size: int = option(128, "SGD minibatch size within a batch.", ge=1)
    num_epochs: int = option(30, "Passes over each batch (RLlib: 30).", ge=1)
    lambda_: float = option(1.0, "GAE lambda (RLlib's name; 1.0 = Monte Carlo returns bootstrapped at truncation).", ge=0, le=1)
    clip_param: float = option(0.3, "PPO's ratio clipping epsilon.", gt=0)
    vf_clip_param: float = option(10.0, "Clip of the value loss (sensitive to the scale of returns).", gt=0)
    vf_loss_coeff: float = option(1.0, "Weight of the value-function loss.", ge=0)
    entropy_coeff: float = option(0.0, "Weight of the entropy bonus.", ge=0)
    use_kl_loss: bool = option(True, "Add the adaptive KL penalty to the loss.")
    kl_coeff: float = option(0.2, "Initial KL penalty coefficient.", ge=0)
    kl_target: float = option(0.01, "KL divergence the penalty coefficient adapts towards.", gt=0)
    grad_clip: float | None = option(None, "Clip the global gradient norm at this value; None: no clipping.", gt=0)
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden widths of the policy and value networks (fcnet_hiddens).", ge=1, nonempty=True)

    def validate(self) -> None:
        """Raise ValueError for settings RLlib would refuse together."""
        if self.minibatch_size > self.train_batch_size_per_learner:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must not exceed train_batch_size_per_learner "
                f"({self.train_batch_size_per_learner})."
            )


@dataclass(frozen=True)
class RLlibAPPOConfig:
    """APPO settings as RLlib's ``APPOConfig.training()`` names them, with RLlib's defaults."""

    lr: float = option(5e-4, "Adam learning rate.", gt=0)
    gamma: float = option(0.99, "Discount factor.", gt=0, le=1)
    train_batch_size_per_learner: int = option(500, "Env steps per learner update (RLlib samples 50-step fragments).", ge=1)
    num_epochs: int = option(1, "Passes over each batch.", ge=1)
    lambda_: float = option(1.0, "GAE lambda (RLlib's name).", ge=0, le=1)
    clip_param: float = option(0.4, "PPO's ratio clipping epsilon.", gt=0)
    vf_loss_coeff: float = option(0.5, "Weight of the value-function loss.", ge=0)
    entropy_coeff: float = option(0.01, "Weight of the entropy bonus.", ge=0)
    use_kl_loss: bool = option(False, "Add a KL penalty towards the target network's policy.")
    kl_coeff: float = option(1.0, "KL penalty coefficient.", ge=0)
    kl_target: float = option(0.01, "KL divergence the penalty coefficient adapts towards.", gt=0)
    grad_clip: float | None = option(40.0, "Clip the global gradient norm at this value; None: no clipping.", gt=0)
    target_network_update_freq: int = option(2, "Update the target network every this many learner updates (times num_epochs).", ge=1)
    tau: float = option(1.0, "Polyak rate of the target network update (1.0: copy).", gt=0, le=1)
    vtrace_clip_rho_threshold: float = option(1.0, "V-trace's rho-bar: clip of the importance weights in the value targets.", gt=0)
    vtrace_clip_pg_rho_threshold: float = option(1.0, "V-trace's clip of the importance weights in the policy gradient.", gt=0)
    use_circular_buffer: bool = option(True, "Replay each batch from a small circular buffer (RLlib's APPO default).")
    circular_buffer_num_batches: int = option(8, "Batches the circular buffer holds.", ge=1)
    circular_buffer_iterations_per_batch: int = option(2, "Times each batch is replayed from the circular buffer.", ge=1)
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden widths of the policy and value networks (fcnet_hiddens).", ge=1, nonempty=True)


@dataclass(frozen=True)
class RLlibSACConfig:
    """SAC settings as RLlib's ``SACConfig.training()`` names them, with RLlib's defaults.

    RLlib's SAC has no single ``lr``: actor, critic and temperature each have their own."""

    actor_lr: float = option(3e-5, "Adam learning rate of the policy (RLlib: 3e-5, a tenth of the critic's).", gt=0)
    critic_lr: float = option(3e-4, "Adam learning rate of the Q-networks.", gt=0)
    alpha_lr: float = option(3e-4, "Adam learning rate of the entropy temperature.", gt=0)
    gamma: float = option(0.99, "Discount factor.", gt=0, le=1)
    tau: float = option(5e-3, "Polyak averaging rate of the target Q-networks.", gt=0, le=1)
    twin_q: bool = option(True, "Two Q-networks, the smaller estimate used (clipped double Q).")
    initial_alpha: float = option(1.0, "Initial entropy temperature.", gt=0)
    target_entropy: float | Literal["auto"] = option("auto", "Entropy target; auto: RLlib's -prod(action shape), i.e. -dim(A) for boxes and -1 for discrete actions.")
    n_step: int = option(1, "N-step returns in the Q targets.", ge=1)
    train_batch_size_per_learner: int = option(256, "Replay minibatch size.", ge=1)
    num_steps_sampled_before_learning_starts: int = option(1500, "Env steps collected before the first update.", ge=0)
    replay_buffer_capacity: int = option(1_000_000, "Transitions the (prioritized) replay buffer holds: replay_buffer_config['capacity'].", ge=1)
    training_intensity: float | None = option(None, "Replayed / sampled steps ratio; None: RLlib's natural ratio (one update per sampled step).", gt=0)
    target_network_update_freq: int = option(0, "Env steps between target updates (0: after every update).", ge=0)
    grad_clip: float | None = option(None, "Clip the global gradient norm at this value; None: no clipping.", gt=0)
    store_buffer_in_checkpoints: bool = option(True, "Write the replay buffer into every checkpoint so resume continues exactly (RLlib: False).")
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden widths of the policy and Q-networks (fcnet_hiddens).", ge=1, nonempty=True)


@dataclass(frozen=True)
class RLlibDQNConfig:
    """DQN settings as RLlib's ``DQNConfig.training()`` names them, with RLlib's defaults."""

    lr: float = option(5e-4, "Adam learning rate.", gt=0)
    gamma: float = option(0.99, "Discount factor.", gt=0, le=1)
    train_batch_size_per_learner: int = option(32, "Replay minibatch size.", ge=1)
    num_steps_sampled_before_learning_starts: int = option(1000, "Env steps collected before the first update.", ge=0)
    replay_buffer_capacity: int = option(50_000, "Transitions the (prioritized) replay buffer holds: replay_buffer_config['capacity'].", ge=1)
    target_network_update_freq: int = option(500, "Env steps between target-network updates.", ge=1)
    tau: float = option(1.0, "Polyak rate of a target update (1.0: copy).", gt=0, le=1)
    double_q: bool = option(True, "Double DQN targets (van Hasselt et al. 2016).")
    dueling: bool = option(True, "Dueling value/advantage heads (Wang et al. 2016).")
    n_step: int = option(1, "N-step returns in the targets.", ge=1)
    initial_epsilon: float = option(1.0, "Epsilon-greedy's epsilon at step 0.", ge=0, le=1)
    final_epsilon: float = option(0.05, "Epsilon after epsilon_timesteps.", ge=0, le=1)
    epsilon_timesteps: int = option(10_000, "Env steps over which epsilon falls linearly.", ge=1)
    training_intensity: float | None = option(None, "Replayed / sampled steps ratio; None: RLlib's natural ratio.", gt=0)
    td_error_loss_fn: Literal["huber", "mse"] = option("huber", "Loss of the TD error.")
    adam_epsilon: float = option(1e-8, "Adam's epsilon.", gt=0)
    grad_clip: float | None = option(40.0, "Clip the global gradient norm at this value; None: no clipping.", gt=0)
    store_buffer_in_checkpoints: bool = option(True, "Write the replay buffer into every checkpoint so resume continues exactly (RLlib: False).")
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden widths of the Q-network (fcnet_hiddens).", ge=1, nonempty=True)


#: Tuned settings (``toolkit train rllib-ppo --preset``). On CartPole-v1: RLlib's tuned example's
#: lr, num_epochs and vf_loss_coeff, with a 1,000-step batch and 64x64 networks, which learn
#: faster in wall time than its 4,000-step batch on two cores. Measured with
#: ``tests/test_bridge_rllib.py -k ppo_learns_cartpole`` (evaluation of 5 episodes every 2,000
#: steps, stop at the first >= 475): seed 0 gets there at 4,000 steps.
PPO_PRESETS = {
    "CartPole-v1": {
        "settings": {"lr": 3e-4, "num_epochs": 6, "vf_loss_coeff": 0.01, "train_batch_size_per_learner": 1000,
                     "minibatch_size": 128, "hidden_sizes": (64, 64)},
        "return": 476.0,
        "command": "pytest tests/test_bridge_rllib.py -k ppo_learns_cartpole (seed 0: 476.0 at 4,000 steps)",
    },
}

RLLIB_PPO = AgentSpec(
    name="rllib-ppo",
    config=RLlibPPOConfig,
    factory="toolkit_bridges.rllib:make_ppo",
    kind="external",
    action_spaces=("box", "discrete"),
    observation_spaces=("box",),
    description="Proximal Policy Optimization (Schulman et al. 2017) (RLlib): clipped ratio, adaptive KL penalty, GAE.",
    api_version=1,
    presets=PPO_PRESETS,
    requires=("ray",),
    extra=EXTRA,
)

RLLIB_APPO = AgentSpec(
    name="rllib-appo",
    config=RLlibAPPOConfig,
    factory="toolkit_bridges.rllib:make_appo",
    kind="external",
    action_spaces=("box", "discrete"),
    observation_spaces=("box",),
    description="Asynchronous PPO: IMPALA's V-trace actor-learner (Espeholt et al. 2018) with PPO's clipped objective (RLlib).",
    api_version=1,
    requires=("ray",),
    extra=EXTRA,
)

RLLIB_SAC = AgentSpec(
    name="rllib-sac",
    config=RLlibSACConfig,
    factory="toolkit_bridges.rllib:make_sac",
    kind="external",
    # RLlib's new-stack SAC catalog builds a discrete policy head too (Christodoulou 2019).
    action_spaces=("box", "discrete"),
    observation_spaces=("box",),
    description="Soft Actor-Critic (Haarnoja et al. 2018) (RLlib): twin Q, auto-tuned temperature, prioritized replay.",
    api_version=1,
    requires=("ray",),
    extra=EXTRA,
)

RLLIB_DQN = AgentSpec(
    name="rllib-dqn",
    config=RLlibDQNConfig,
    factory="toolkit_bridges.rllib:make_dqn",
    kind="external",
    action_spaces=("discrete",),
    observation_spaces=("box",),
    description="Deep Q-Network (Mnih et al. 2015) (RLlib): double Q, dueling heads, prioritized replay, epsilon-greedy.",
    api_version=1,
    requires=("ray",),
    extra=EXTRA,
)
