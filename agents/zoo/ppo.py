"""PPO for RL Baselines3 Zoo: ``-conf agents.zoo.ppo`` (see :mod:`agents.zoo`)."""

from agents.zoo import hyperparameters

hyperparams = hyperparameters("ppo")
