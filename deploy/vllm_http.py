"""Talking to a running vLLM OpenAI server: health, served models, LoRA hot-loading, in-flight requests.

Small synchronous helpers over httpx (the launcher runs in the controller/CLI, not in the gateway's loop).
"""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path

import httpx

TIMEOUT_S = 10.0
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def is_healthy(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/health", timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


def warm_up(base_url: str, served_name: str, requests: int = 4, timeout_s: float = 120.0) -> float:
    """Answer a few short chats at once before the server takes traffic; returns the seconds it took.

    A new vLLM-CPU server answers its first batch far slower than the rest (lazy kernel and cache set-up):
    in a canary on this 2-core machine the new arm's p95 was 1469 ms against production's 71 ms, all of it
    the first batch, and the latency check rolled a good canary back. Users should not pay for that either."""
    def one(i: int) -> None:
        response = httpx.post(base_url + "/v1/chat/completions", timeout=timeout_s, json={
            "model": served_name, "messages": [{"role": "user", "content": f"warm-up {i}"}],
            "max_tokens": 2, "temperature": 0})
        if response.status_code >= 400:
            raise RuntimeError(f"a warm-up chat answered {response.status_code}: {response.text[:300]}")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        for future in [pool.submit(one, i) for i in range(requests)]:
            future.result()
    return time.monotonic() - started


def served_models(base_url: str) -> list[str]:
    """Model names the server answers to: its served name and every loaded LoRA adapter."""
    response = httpx.get(base_url + "/v1/models", timeout=TIMEOUT_S)
    response.raise_for_status()
    return [card["id"] for card in response.json().get("data", [])]


def load_adapter(base_url: str, lora_name: str, lora_path: str) -> None:
    """POST /v1/load_lora_adapter; a server started without VLLM_ALLOW_RUNTIME_LORA_UPDATING answers 404."""
    if lora_name in served_models(base_url):
        return  # already there (e.g. a second controller got here first): loading again would be refused
    response = httpx.post(base_url + "/v1/load_lora_adapter",
                          json={"lora_name": lora_name, "lora_path": lora_path}, timeout=120.0)
    if response.status_code >= 400:
        raise RuntimeError(f"load_lora_adapter answered {response.status_code}: {response.text[:500]}")


def unload_adapter(base_url: str, lora_name: str) -> None:
    if lora_name not in served_models(base_url):
        return
    response = httpx.post(base_url + "/v1/unload_lora_adapter", json={"lora_name": lora_name}, timeout=TIMEOUT_S)
    if response.status_code >= 400:
        raise RuntimeError(f"unload_lora_adapter answered {response.status_code}: {response.text[:500]}")


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> (name, labels, value) samples (enough of the format for vLLM's gauges)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        samples.append((match["name"], dict(_LABEL.findall(match["labels"] or "")), value))
    return samples


def requests_in_flight(samples: list[tuple[str, dict[str, str], float]], lora_name: str | None = None) -> int:
    """Running + waiting requests of the whole server, or (lora_name given) whether that adapter has any.

    vLLM's `vllm:lora_requests_info` keeps one sample per label set, each holding the time it was last set;
    the newest one is the current state, listing the adapters with running or waiting requests.
    """
    if lora_name is None:
        return int(sum(value for name, _labels, value in samples
                       if name in ("vllm:num_requests_running", "vllm:num_requests_waiting")))
    lora = [(value, labels) for name, labels, value in samples if name == "vllm:lora_requests_info"]
    if not lora:
        return 0
    _newest, labels = max(lora, key=lambda item: item[0])
    names = set(labels.get("running_lora_adapters", "").split(",")) | set(
        labels.get("waiting_lora_adapters", "").split(","))
    return 1 if lora_name in names else 0


def in_flight(base_url: str, served_name: str, adapter: bool) -> int:
    """Requests still being served for a deployment; 0 when the server is gone (nothing left to finish)."""
    try:
        response = httpx.get(base_url + "/metrics", timeout=TIMEOUT_S)
    except httpx.HTTPError:
        return 0
    if response.status_code != 200:
        return 0
    return requests_in_flight(parse_metrics(response.text), served_name if adapter else None)


def is_vllm_process(pid: int) -> bool:
    """The pid is alive and runs a vLLM server (a recorded pid may have been reused after a reboot)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if "\nState:\tZ" in status:
        return False  # a zombie: exited, waiting for its parent to reap it
    return any(b"vllm" in part.lower() for part in cmdline)  # setproctitle may write VLLM::...
