"""Serving and rollout: vLLM servers, canary control, and the scheduled improvement cycle."""
