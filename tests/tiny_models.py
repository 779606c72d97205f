"""Tiny random-init models of each supported family, saved as real HF directories with a real tokenizer.

Built offline in a second: a byte-level BPE trained on the project's own sample text, and configs with a
couple of layers. Tests load them through the same `load_model` path users take.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_TEXT = """\
The quick brown fox jumps over the lazy dog. Numbers like 1, 2, 10 and 2024 appear in text.
def main(): return compute(values) + 1  # a comment
In the beginning of the month of May the red and blue colours of the garden change.
Cats, dogs, horses and birds are animals. "Quoted words" and (parenthesised words) occur too.
Return a list of the items; raise ValueError if the argument is negative.
January February March April May June July August September October November December
"""


def train_tokenizer(directory: Path, *, vocab_size: int = 400) -> None:
    """Train a byte-level BPE on SAMPLE_TEXT and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([SAMPLE_TEXT] * 5, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")
    fast.save_pretrained(directory)


def make_tiny_model(directory: Path, family: str = "llama", *, seed: int = 0, layers: int = 2) -> Path:
    """Save a random-init model of `family` (llama, mistral, qwen2, gemma, gpt2, gpt_neox, bert) to `directory`."""
    import torch
    import transformers as tf

    directory.mkdir(parents=True, exist_ok=True)
    train_tokenizer(directory)
    vocab = 400
    common = dict(vocab_size=vocab, num_hidden_layers=layers, num_attention_heads=4, hidden_size=32)
    if family in ("llama", "mistral", "qwen2", "gemma"):
        config_class = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
                        "gemma": tf.GemmaConfig}[family]
        extra = dict(head_dim=8) if family == "gemma" else {}
        config = config_class(**common, intermediate_size=48, num_key_value_heads=2, max_position_embeddings=256,
                              bos_token_id=0, eos_token_id=1, pad_token_id=2, **extra)
        model_class = {"llama": tf.LlamaForCausalLM, "mistral": tf.MistralForCausalLM,
                       "qwen2": tf.Qwen2ForCausalLM, "gemma": tf.GemmaForCausalLM}[family]
    elif family == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab, n_layer=layers, n_head=4, n_embd=32, n_positions=256,
                               bos_token_id=0, eos_token_id=1)
        model_class = tf.GPT2LMHeadModel
    elif family == "gpt_neox":
        config = tf.GPTNeoXConfig(**common, intermediate_size=64, max_position_embeddings=256, bos_token_id=0,
                                  eos_token_id=1)
        model_class = tf.GPTNeoXForCausalLM
    elif family == "bert":
        config = tf.BertConfig(**common, intermediate_size=64, max_position_embeddings=256, pad_token_id=2)
        model_class = tf.BertModel
    else:
        raise ValueError(f"unknown family {family}")
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(directory)
    return directory
