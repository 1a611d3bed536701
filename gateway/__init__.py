"""The OpenAI-compatible gateway: proxies vLLM replicas, authenticates keys, logs every interaction."""
