"""A tiny Llama built locally (random init, tokenizer trained here) so the loop runs with no hub access.

It is the tiny model for tests that need one in seconds (the default base is SmolLM2-135M-Instruct). Its
shape follows trainer/README.md, "Reference recipe and measurements": with initializer_range=0.1 a LoRA
adapter can teach it a strict answer format in under a minute on 2 cores (with the usual 0.02 the frozen
random embeddings cap the logits and the loss stalls).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

END_TOKEN = "<|end|>"
SPECIAL_TOKENS = ["<|begin|>", END_TOKEN, "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]

# Assistant turns sit inside {% generation %} so TRL's assistant_only_loss can mask everything else.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

_WORD_TEXT = (
    "the a an of to in is are was be it that this for on with as by at from or and not no yes what which who "
    "how when where why can do does should would could will please answer question give me tell list name "
    "capital country city color number sum total price order customer product status ok error true false "
    "json yaml key value result answer reason score label category positive negative neutral small large "
    "red green blue black white first second third last next one two three four five six seven eight nine "
    "ten hundred thousand plus minus times equals model version data train eval test user assistant system "
    "server request response time date day week month year table index query database postgres python code"
)
_WORDS = _WORD_TEXT.split()


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    from trainer.demo_task import task_vocabulary

    task_lines = task_vocabulary()
    out = []
    for _ in range(lines):
        words = rng.choices(_WORDS, k=rng.randint(4, 18))
        numbers = [str(rng.randint(0, 9999)) for _ in range(rng.randint(0, 3))]
        sentence = " ".join(words + numbers)
        style = rng.random()
        if style < 0.1:
            # The demo task's phrasing (see trainer/demo_task.py), so its words become whole tokens.
            sentence = rng.choice(task_lines).replace("1234", str(rng.randint(100, 99999)))
        elif style < 0.25:
            sentence = json.dumps({rng.choice(_WORDS): rng.choice(_WORDS), "n": rng.randint(0, 999)})
        elif style < 0.5:
            sentence = sentence.capitalize() + rng.choice([".", "?", "!", ":"])
        out.append(sentence)
    return out


def build_tokenizer(vocab_size: int = 1024, seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Digits one token each (as in many production tokenizers): a number's token count is then its digit count,
    # so a copied number has a regular shape the tiny model can learn (BPE-merged digits vary from 1 to 3 tokens).
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(random.Random(seed)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin|>",
        eos_token=END_TOKEN,
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1024
    return fast


def build_demo_model(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write a small random Llama with its tokenizer and chat template to `out_dir` (safetensors)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=vocab_size, seed=seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        initializer_range=0.1,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
