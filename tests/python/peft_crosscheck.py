#!/usr/bin/env python3
"""Cross-checks vadapt's LoRA files against Hugging Face transformers + PEFT (run where torch,
transformers and peft are installed; vadapt itself never needs Python).

make DIR     writes DIR/llm (a tiny random LlamaForCausalLM, safetensors; vocabulary 512 so that
             stories260K's tokenizer.model fits), DIR/clip (a tiny random CLIP vision tower), DIR/peft (a LoRA made
             by PEFT with non-zero B, rsLoRA off), DIR/ids.json and DIR/expected.safetensors (the
             PEFT model's logits for those ids). tests/golden/peft holds one such set: the
             GoldenPeft test loads the folder with vadapt and compares logits.
check DIR ADAPTER MERGED
             loads a vadapt-written LoRA adapter folder with PeftModel.from_pretrained on DIR/llm
             and compares its logits with transformers' logits of MERGED (the folder
             `vadapt merge` wrote from that adapter): PEFT reads our files, and our merge is
             what PEFT computes.
"""
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model

IDS = [[1, 7, 42, 99, 3, 250, 17, 8, 64], [1, 5, 5, 500, 31, 2, 77, 140, 9]]


def make(d):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else torch.nn.init.normal_(p, mean=1.0, std=0.1)
    model.save_pretrained(f"{d}/llm", safe_serialization=True)
    lcfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.3)
    pm.save_pretrained(f"{d}/peft", safe_serialization=True)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        logits = pm(input_ids=ids).logits.float()
    save_file({"logits": logits.contiguous(), "ids": ids}, f"{d}/expected.safetensors")
    json.dump(IDS, open(f"{d}/ids.json", "w"))
    # A tiny random CLIP vision tower (32 px, 8 px patches) for training a vadapt adapter on llm.
    from transformers import CLIPVisionConfig, CLIPVisionModel
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                            patch_size=8, projection_dim=16)
    CLIPVisionModel(vcfg).save_pretrained(f"{d}/clip", safe_serialization=True)
    print(f"wrote {d}: max |logit| {logits.abs().max().item():.3f}")


def check(d, adapter, merged):
    base = LlamaForCausalLM.from_pretrained(f"{d}/llm", torch_dtype=torch.float32).eval()
    pm = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor(IDS)
    with torch.no_grad():
        a = pm(input_ids=ids).logits
        m = LlamaForCausalLM.from_pretrained(merged, torch_dtype=torch.float32).eval()
        b = m(input_ids=ids).logits
        plain = LlamaForCausalLM.from_pretrained(f"{d}/llm", torch_dtype=torch.float32).eval()(input_ids=ids).logits
    diff = (a - b).abs().max().item()
    moved = (a - plain).abs().max().item()
    print(json.dumps({"peft_vs_vadapt_merge_max_abs_diff": diff, "adapter_effect_max_abs": moved}))
    assert diff < 1e-4, diff
    assert moved > 1e-3, "the adapter changed nothing: B was not trained?"


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
