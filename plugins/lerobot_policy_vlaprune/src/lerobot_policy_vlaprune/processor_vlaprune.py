"""Processors of the pruned types: the family's own (a cut changes no input or output)."""

from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors
from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors


def make_vlaprune_smolvla_pre_post_processors(config, dataset_stats=None):
    return make_smolvla_pre_post_processors(config, dataset_stats=dataset_stats)


def make_vlaprune_pi0_pre_post_processors(config, dataset_stats=None):
    return make_pi0_pre_post_processors(config, dataset_stats=dataset_stats)


def make_vlaprune_pi05_pre_post_processors(config, dataset_stats=None):
    return make_pi05_pre_post_processors(config, dataset_stats=dataset_stats)
