#!/usr/bin/env python3
"""Writes the committed libFuzzer seeds tests/fuzz/seeds/<target> (all made up here, none copied
from a third party); kept for regenerating them:  python3 tests/fuzz/make_seeds.py tests/fuzz/seeds
(the image seeds come from make_image_seeds.cpp). run.sh adds real files from ../shared when present."""
import json, os, struct, sys

out = sys.argv[1]


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# safetensors: header length, JSON header, data
def st(tensors, meta=True):
    header, blob = {}, b""
    if meta:
        header["__metadata__"] = {"format": "pt"}
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + blob


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
put("safetensors", "f32.safetensors", st([("a.weight", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)), ("b", "F32", [], f32(7))]))
put("safetensors", "mixed.safetensors", st([("x", "BF16", [4], b"\x80\x3f" * 4), ("y", "F16", [2], b"\x00\x3c" * 2),
                                            ("z", "I64", [1], struct.pack("<q", 5)), ("u", "U8", [3], b"\x01\x02\x03"),
                                            ("e", "F32", [0, 4], b"")], meta=False))

# config.json / adapter_config.json
llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
         "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
         "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}, "eos_token_id": [2, 3], "torch_dtype": "float32"}
vit = {"model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": 192, "num_hidden_layers": 2,
       "num_attention_heads": 3, "intermediate_size": 768, "image_size": 32, "patch_size": 16, "id2label": {"0": "a"}}
clip = {"model_type": "clip", "projection_dim": 512,
        "vision_config": {"hidden_size": 64, "patch_size": 8, "image_size": 32, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "intermediate_size": 128, "hidden_act": "quick_gelu"}}
spec = {"method": "llava", "llm": "/m/llm", "vision": "/m/clip", "template": "vicuna_v1", "system_prompt": "",
        "dtype": "float32", "seed": 3, "connector": "mlp2x_gelu", "feature_layer": -2, "pool": 2,
        "feature_norm": "standardize", "tune": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05,
                                                                 "target_modules": ["q_proj", "v_proj"]}}
v1 = {"method": "llama_adapter_v1", "llm": "/m/llm", "vision": "/m/clip", "template": "alpaca", "adapter_layers": 2,
      "adapter_len": 10}
peft = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj"],
        "use_rslora": False, "base_model_name_or_path": "x"}
for name, j in [("llama", llama), ("vit", vit), ("clip", clip), ("spec", spec), ("v1", v1), ("peft", peft),
                ("peft_regex", dict(peft, target_modules=".*proj"))]:
    put("config", name + ".json", json.dumps(j))


# tokenizer.json (byte-level BPE) and tokenizer_config.json after "\0\0"
def b2u():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


m = b2u()
vocab = {m[b]: b for b in range(256)}
merges = [("\u0120", "t"), ("h", "e"), ("\u0120t", "he"), ("i", "n")]
for i, (a, b) in enumerate(merges):
    vocab[a + b] = 258 + i
tok = {"version": "1.0", "added_tokens": [{"id": 256, "content": "<s>", "special": True},
                                          {"id": 257, "content": "</s>", "special": True}],
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
       "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": vocab, "merges": [a + " " + b for a, b in merges]}}
cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "legacy": False,
       "added_tokens_decoder": {"256": {"content": "<s>"}, "257": {"content": "</s>"}}}
put("tokenizer_json", "bpe.json", json.dumps(tok, ensure_ascii=False))
put("tokenizer_json", "bpe_cfg.json", json.dumps(tok, ensure_ascii=False) + "\0\0" + json.dumps(cfg))


# tokenizer.model: a SentencePiece ModelProto written field by field (protobuf wire format)
def varint(n):
    b = b""
    while True:
        c = n & 0x7F; n >>= 7
        b += bytes([c | (0x80 if n else 0)])
        if not n:
            return b


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 5:
        return key + struct.pack("<f", payload)
    return key + varint(len(payload)) + payload


def piece(text, score, kind=1):  # kind: 1 normal, 2 unknown, 3 control, 6 byte
    return field(1, 2, field(1, 2, text.encode()) + field(2, 5, score) + field(3, 0, kind))


def sp_model(model_type, byte_fallback):
    pieces = [piece("<unk>", 0, 2), piece("<s>", 0, 3), piece("</s>", 0, 3)]
    if byte_fallback:
        pieces += [piece("<0x%02X>" % b, 0, 6) for b in range(256)]
    for i, p in enumerate(["\u2581", "e", "t", "a", "o", "\u2581t", "he", "\u2581the", "in", "ll", "\u2581H", "lo"]):
        pieces.append(piece(p, -float(i), 1))
    trainer = (field(3, 0, model_type) + field(4, 0, len(pieces)) + field(35, 0, int(byte_fallback)) +
               field(40, 0, 0) + field(41, 0, 1) + field(42, 0, 2) + field(43, 0, 2**64 - 1))
    normalizer = field(1, 2, b"identity") + field(3, 0, 1) + field(4, 0, 0)
    return b"".join(pieces) + field(2, 2, trainer) + field(3, 2, normalizer)


put("tokenizer_model", "bpe.model", sp_model(2, True))
put("tokenizer_model", "unigram.model", sp_model(1, False))
put("tokenizer_model", "bpe_cfg.model", sp_model(2, True) + b"\0\0" + json.dumps({"add_bos_token": False, "legacy": False}).encode())

# data files
conv = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
put("data_llava", "llava.json", json.dumps([
    {"id": "1", "image": "a.png", "conversations": conv("<image>\nWhat color is the circle?", "red")},
    {"id": "2", "image": "b.png", "type": "count", "conversations": conv("How many?\n<image>", "2") + conv("And squares?", "1")},
    {"id": "3", "conversations": conv("Say hi.", "hi")},
    {"id": "4", "image": ["c.png", "d.png"], "conversations": [{"from": "system", "value": "Be brief."}] + conv("<image> Describe.", "Two frames.")}]))
put("data_alpaca", "alpaca.json", json.dumps([
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Describe the image.", "input": "", "output": "A cat.", "image": "cat.png"}]))
put("data_jsonl", "data.jsonl", '{"image": "a.png", "text": "a red circle"}\n{"image": "b.png", "text": "two squares"}\n\n')
put("data_coco", "captions.json", json.dumps({
    "images": [{"id": 1, "file_name": "000001.jpg", "width": 64, "height": 48}, {"id": 2, "file_name": "000002.jpg"}],
    "annotations": [{"id": 10, "image_id": 1, "caption": "A dog on grass."}, {"id": 11, "image_id": 2, "caption": "Two cups."},
                    {"id": 12, "image_id": 1, "caption": "A brown dog."}]}))
prob = lambda q, ch, a, img=None, ctx="": {"question": q, "choices": ch, "answer": a, "hint": ctx, "image": img,
                                          "task": "closed choice", "grade": "grade3", "subject": "natural science",
                                          "topic": "biology", "category": "Animals", "skill": "x",
                                          "lecture": "Animals live.", "solution": "It is a bird.", "split": "test"}
put("data_scienceqa", "problems.json", json.dumps({"1": prob("Which is a bird?", ["owl", "cat"], 0),
                                                   "2": prob("Which is hot?", ["ice", "sun", "snow"], 1, "image.png", "Look."),
                                                   "5": prob("Pick one.", ["a", "b"], 1)}))

# HTTP bodies
png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
for name, body in [
    ("chat", {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
              "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 3, "stop": ["\n", "###"], "stream": True}),
    ("image", {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}]},
                            {"role": "assistant", "content": "A dot."}, {"role": "user", "content": "Sure?"}],
               "num_beams": 2, "max_tokens": 4}),
    ("completion", {"model": "m", "prompt": "Once upon a time", "max_tokens": 16, "stop": "end", "temperature": 0}),
]:
    put("http", name + ".json", json.dumps(body))
