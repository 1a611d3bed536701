"""Greedy generation on held-out chat examples with plain transformers (no vLLM), for quick quality checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def load_for_generation(model_dir: str | Path, *, adapter_dir: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on CPU/GPU: a merged or base model, optionally with a LoRA adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir or model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if torch.cuda.is_available():
        model.to("cuda")
    return model.eval(), tokenizer


@torch.no_grad()
def generate_answers(
    model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]], max_new_tokens: int = 32
) -> list[str]:
    """Greedy answers to each conversation's prompt (its trailing assistant turn, if any, is dropped)."""
    answers = []
    for messages in conversations:
        prompt_messages = list(messages)
        if prompt_messages and prompt_messages[-1]["role"] == "assistant":
            prompt_messages = prompt_messages[:-1]
        prompt = tokenizer.apply_chat_template(
            prompt_messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt = {k: v.to(model.device) for k, v in prompt.items()}
        output = model.generate(
            **prompt,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[0, prompt["input_ids"].shape[1] :]
        answers.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
    return answers


def rate(conversations: Sequence[Sequence[dict[str, str]]], answers: Sequence[str], ok: Callable[..., bool]) -> float:
    """Share of answers for which `ok(conversation, answer)` holds."""
    if not answers:
        return 0.0
    return sum(bool(ok(conv, ans)) for conv, ans in zip(conversations, answers, strict=True)) / len(answers)


@torch.no_grad()
def completion_logprob(model: Any, tokenizer: Any, prompt: Sequence[dict[str, str]], completion: str) -> float:
    """Sum of log-probabilities of `completion` as the assistant's answer to `prompt` (the preference methods'
    own measure: DPO raises chosen over rejected)."""
    context = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(context):
        raise ValueError("the chat template renders the prompt differently once an answer follows")
    prompt_ids = tokenizer(context, add_special_tokens=False, return_tensors="pt")["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
    logits = model(input_ids=full_ids).logits[0, :-1].float()
    targets = full_ids[0, 1:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
    return float(logprobs[prompt_ids.shape[1] - 1:].sum())
