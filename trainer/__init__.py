"""QLoRA / LoRA fine-tuning with PEFT + TRL, and adapter merging."""
