"""The synthetic demo corpus under its original import path (`quickstart` and scripts use it); see `data.demo`."""

from .data.demo import EMOTIONS, build_demo_corpus, demo_conversation

__all__ = ["EMOTIONS", "build_demo_corpus", "demo_conversation"]
