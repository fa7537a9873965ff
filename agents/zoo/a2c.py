"""A2C for RL Baselines3 Zoo: ``-conf agents.zoo.a2c`` (see :mod:`agents.zoo`)."""

from agents.zoo import hyperparameters

hyperparams = hyperparameters("a2c")
