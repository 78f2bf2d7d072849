"""The PyTorch side of scripts/bench-model-vs-torch: Hugging Face transformers' Llama at the shape
of `waypoint bench-model`'s 110m row (random weights, f32, eager attention, one thread), timed
the same way: one prefill of `batch` prompts, then `decode_steps` greedy steps over its KV cache,
decode figured from the median step. Prints one line per batch: `batch prefill_tok_s decode_tok_s`."""

import argparse
import statistics
import time
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=16)
    args = parser.parse_args()

    # transformers warns about its own internal use of a renamed argument.
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32_000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        rope_theta=10_000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        max_position_embeddings=args.prompt_len + args.decode_steps + 16,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval().to(torch.float32)
    for batch in (int(b) for b in args.batch.split(",")):
        prompts = torch.randint(0, config.vocab_size, (batch, args.prompt_len))
        with torch.inference_mode():
            start = time.perf_counter()
            output = model(input_ids=prompts, use_cache=True)
            prefill = time.perf_counter() - start
            cache = output.cache
            tokens = output.logits[:, -1, :].argmax(-1, keepdim=True)
            steps = []
            for _ in range(args.decode_steps):
                start = time.perf_counter()
                output = model(input_ids=tokens, past_key_values=cache, use_cache=True)
                cache = output.cache
                tokens = output.logits[:, -1, :].argmax(-1, keepdim=True)
                steps.append(time.perf_counter() - start)
        print(batch, batch * args.prompt_len / prefill, batch / statistics.median(steps), flush=True)


if __name__ == "__main__":
    main()
