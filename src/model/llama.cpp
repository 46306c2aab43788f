// Llama decoder forward pass (HF LlamaForCausalLM numerics) with KV cache and seams.
#include "model/llama.h"

#include <filesystem>
#include <set>

#include "common/error.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/load.h"
#include "model/weight_share.h"

namespace vadapt::model {

LlamaAttentionImpl::LlamaAttentionImpl(const io::LlamaConfig& c, int64_t layer, const torch::TensorOptions& opts)
    : layer_(layer), num_heads_(c.num_attention_heads), num_kv_heads_(c.num_key_value_heads), head_dim_(c.head_dim) {
  scale_ = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  q_proj = register_module("q_proj", Projection(c.hidden_size, num_heads_ * head_dim_, c.attention_bias, opts));
  k_proj = register_module("k_proj", Projection(c.hidden_size, num_kv_heads_ * head_dim_, c.attention_bias, opts));
  v_proj = register_module("v_proj", Projection(c.hidden_size, num_kv_heads_ * head_dim_, c.attention_bias, opts));
  o_proj = register_module("o_proj", Projection(num_heads_ * head_dim_, c.hidden_size, c.attention_bias, opts));
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                          const torch::Tensor& mask, const Rope& rope, ForwardContext& ctx) {
  const int64_t b = x.size(0), t = x.size(1), h = num_heads_, kv = num_kv_heads_, d = head_dim_, rep = h / kv;
  auto q = q_proj(x).view({b, t, h, d}).transpose(1, 2);   // (B, H, T, D)
  auto k = k_proj(x).view({b, t, kv, d}).transpose(1, 2);  // (B, KV, T, D)
  auto v = v_proj(x).view({b, t, kv, d}).transpose(1, 2);  // (B, KV, T, D)
  q = rope.apply(q, cos, sin);                              // (B, H, T, D)
  k = rope.apply(k, cos, sin);                              // (B, KV, T, D)
  if (ctx.cache) std::tie(k, v) = ctx.cache->append(layer_, k, v);  // (B, KV, S, D)
  const int64_t s = k.size(2);
  auto qg = q.reshape({b, kv, rep * t, d});                                  // (B, KV, rep*T, D)
  auto scores = torch::matmul(qg, k.transpose(-1, -2)).mul_(scale_);         // (B, KV, rep*T, S)
  if (mask.defined()) scores = scores.view({b, kv, rep, t, s}).add_(mask).view({b, kv, rep * t, s});
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(x.scalar_type());  // (B, KV, rep*T, S)
  auto out = torch::matmul(probs, v).view({b, h, t, d});                     // (B, H, T, D)
  if (prefix) {
    AttentionView view{*k_proj, *v_proj, h, kv, d, layer_};
    out = out + prefix->attend(q, view, ctx);                                // (B, H, T, D)
  }
  out = out.transpose(1, 2).reshape({b, t, h * d});                          // (B, T, H*D)
  return o_proj(out);                                                        // (B, T, d)
}

LlamaMLPImpl::LlamaMLPImpl(const io::LlamaConfig& c, const torch::TensorOptions& opts) {
  gate_proj = register_module("gate_proj", Projection(c.hidden_size, c.intermediate_size, c.mlp_bias, opts));
  up_proj = register_module("up_proj", Projection(c.hidden_size, c.intermediate_size, c.mlp_bias, opts));
  down_proj = register_module("down_proj", Projection(c.intermediate_size, c.hidden_size, c.mlp_bias, opts));
}

torch::Tensor LlamaMLPImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));  // (B, T, d)
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const io::LlamaConfig& c, int64_t layer, const torch::TensorOptions& opts)
    : layer_(layer) {
  self_attn = register_module("self_attn", LlamaAttention(c, layer, opts));
  mlp = register_module("mlp", LlamaMLP(c, opts));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, opts));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, opts));
}

torch::Tensor LlamaDecoderLayerImpl::forward(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin,
                                             const torch::Tensor& mask, const Rope& rope, ForwardContext& ctx) {
  auto h = hooks.run(input_layernorm(x), Sublayer::kAttention, layer_, ctx);  // (B, T, d)
  x = x + self_attn(h, cos, sin, mask, rope, ctx);                             // (B, T, d)
  h = hooks.run(post_attention_layernorm(x), Sublayer::kMlp, layer_, ctx);    // (B, T, d)
  return x + mlp(h);                                                           // (B, T, d)
}

LlamaModelImpl::LlamaModelImpl(const io::LlamaConfig& c, const torch::TensorOptions& opts) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size, opts));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(LlamaDecoderLayer(c, i, opts));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, opts));
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(io::LlamaConfig cfg, const torch::TensorOptions& opts)
    : cfg_(std::move(cfg)), rope_(cfg_, opts.device()) {
  model = register_module("model", LlamaModel(cfg_, opts));
  if (!cfg_.tie_word_embeddings)
    lm_head = register_module("lm_head", Projection(cfg_.hidden_size, cfg_.vocab_size, false, opts));
}

torch::Tensor LlamaForCausalLMImpl::embed(const torch::Tensor& ids) {
  TORCH_CHECK(ids.dim() == 2, "embed expects (B, T) ids, got ", ids.sizes());
  auto lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (ids.numel() > 0 && (lo < 0 || hi >= cfg_.vocab_size))
    throw VadaptError(cat("token id out of range [0, ", cfg_.vocab_size, "): got ", lo < 0 ? lo : hi));
  return model->embed_tokens(ids.to(device()));  // (B, T, d)
}

torch::Tensor build_attention_mask(int64_t b, int64_t t, int64_t past, const torch::Tensor& key_mask,
                                   torch::ScalarType dtype, torch::Device device) {
  const int64_t s = past + t;
  if (t == 1 && !key_mask.defined()) return {};
  auto qpos = torch::arange(past, s, torch::TensorOptions().dtype(torch::kInt64).device(device)).unsqueeze(1);  // (T, 1)
  auto kpos = torch::arange(s, torch::TensorOptions().dtype(torch::kInt64).device(device)).unsqueeze(0);        // (1, S)
  auto allowed = (kpos <= qpos).unsqueeze(0);                                                                   // (1, T, S)
  if (key_mask.defined()) {
    TORCH_CHECK(key_mask.dim() == 2 && key_mask.size(0) == b && key_mask.size(1) == s, "attention_mask must be (",
                b, ", ", s, "), got ", key_mask.sizes());
    allowed = allowed & key_mask.to(device).to(torch::kBool).unsqueeze(1);  // (B, T, S)
  }
  auto zero = torch::zeros({}, torch::TensorOptions().dtype(dtype).device(device));
  // The most negative finite value of the dtype, so fully masked rows (padding) stay finite.
  const double lowest = dtype == torch::kFloat16 ? -65504.0 : dtype == torch::kBFloat16 ? -3.38e38 : -3.4e38;
  auto neg = torch::full({}, lowest, torch::TensorOptions().dtype(dtype).device(device));
  return torch::where(allowed, zero, neg).view({allowed.size(0), 1, 1, t, s});  // (B|1, 1, 1, T, S)
}

torch::Tensor LlamaForCausalLMImpl::forward_embeds(const torch::Tensor& x, ForwardContext& ctx) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == cfg_.hidden_size, "forward_embeds expects (B, T, ", cfg_.hidden_size,
              "), got ", x.sizes());
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t past = ctx.cache ? ctx.cache->length() : 0;
  if (past + t > cfg_.max_position_embeddings)
    throw VadaptError(cat("sequence of ", past + t, " tokens exceeds max_position_embeddings ",
                          cfg_.max_position_embeddings, " (", cfg_.source, ")"));
  torch::Tensor pos = ctx.position_ids;
  if (!pos.defined())
    pos = torch::arange(past, past + t, torch::TensorOptions().dtype(torch::kInt64).device(x.device()))
              .unsqueeze(0)
              .expand({b, t});  // (B, T)
  if (const auto* st = ctx.adapter_state) {
    const int64_t off = past == 0 ? st->position_offset : st->decode_position_offset;
    if (off != 0) {
      // Positions never exceed past + t - 1 (left-padded rows count fewer), so the bound needs
      // no look at the tensor (no device sync on every decode step).
      if (past + t + off > cfg_.max_position_embeddings)
        throw VadaptError(cat("sequence of ", past + t, " tokens shifted by ", off, " positions (the method's) exceeds max_position_embeddings ",
                              cfg_.max_position_embeddings, " (", cfg_.source, ")"));
      pos = pos + off;
    }
  }
  auto [cos, sin] = rope_.tables(pos.to(x.device()), x.scalar_type());            // (B, 1, T, D)
  auto mask = build_attention_mask(b, t, past, ctx.attention_mask, x.scalar_type(), x.device());
  torch::Tensor h = x;
  for (const auto& l : *model->layers) h = l->as<LlamaDecoderLayerImpl>()->forward(h, cos, sin, mask, rope_, ctx);
  if (ctx.cache) ctx.cache->advance(t);
  return model->norm(h);  // (B, T, d)
}

torch::Tensor LlamaForCausalLMImpl::logits(const torch::Tensor& h) {
  if (lm_head) return lm_head(h);                                            // (B, T, V)
  return torch::nn::functional::linear(h, model->embed_tokens->weight);     // (B, T, V)
}

KVCache LlamaForCausalLMImpl::make_cache(int64_t batch, int64_t capacity) const {
  capacity = std::min(capacity, cfg_.max_position_embeddings);
  auto opts = torch::TensorOptions().dtype(model->embed_tokens->weight.scalar_type()).device(model->embed_tokens->weight.device());
  return KVCache(cfg_.num_hidden_layers, batch, cfg_.num_key_value_heads, capacity, cfg_.head_dim, opts);
}

namespace {

// A Hugging Face checkpoint saved from a bitsandbytes 4-bit model (quantization_config
// quant_method bitsandbytes, load_in_4bit): every quantised Linear keeps `X.weight` (uint8, two
// NF4 codes per byte), `X.weight.absmax` (uint8 indices into the nested code),
// `X.weight.nested_absmax`, `X.weight.quant_map` (the 16 NF4 levels), `X.weight.nested_quant_map`
// (the dynamic 8-bit code) and `X.weight.quant_state.bitsandbytes__nf4` (JSON bytes: blocksize,
// shape, nested_offset, ...). They become our NF4 weights as they are (exact dequantisation);
// anything else (FP4, no double quantisation, other block sizes or codes) is refused by name.
// Returns the parameter names filled this way.
std::set<std::string> load_bnb_nf4(LlamaForCausalLMImpl& m, const io::TensorSource& src, const nlohmann::json& qc,
                                   const std::string& cfg_path, torch::ScalarType dtype, torch::Device device,
                                   std::vector<std::string>& ignore) {
  std::set<std::string> filled;
  const auto qt = io::json_get_or<std::string>(qc, "bnb_4bit_quant_type", "fp4", cfg_path);
  if (qt != "nf4") raise(cfg_path, "quantization_config.bnb_4bit_quant_type", "only nf4 is supported, got '", qt, "'");
  if (!io::json_get_or<bool>(qc, "bnb_4bit_use_double_quant", false, cfg_path))
    raise(cfg_path, "quantization_config.bnb_4bit_use_double_quant", "only double-quantised NF4 checkpoints are read");
  const auto levels = torch::tensor(nf4_levels(), torch::kFloat32);
  for (const auto& item : m.named_modules("", false)) {
    auto* p = item.value()->as<ProjectionImpl>();
    const std::string w = item.key() + ".weight";
    if (!p || !src.contains(w + ".quant_state.bitsandbytes__nf4")) continue;  // (bitsandbytes folders are whole LLMs: no prefix)
    auto blob = src.tensor(w + ".quant_state.bitsandbytes__nf4").to(torch::kUInt8).contiguous();
    const std::string text(static_cast<const char*>(blob.data_ptr()), static_cast<size_t>(blob.numel()));
    nlohmann::json st;
    try {
      st = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      raise(src.file_of(w), w + ".quant_state.bitsandbytes__nf4", "not JSON: ", e.what());
    }
    const std::string where = src.file_of(w) + " " + w + ".quant_state";
    if (io::json_get<std::string>(st, "quant_type", where) != "nf4") raise(where, "quant_type", "expected nf4");
    if (io::json_get<int64_t>(st, "blocksize", where) != kNf4Block) raise(where, "blocksize", "expected ", kNf4Block);
    if (io::json_get<int64_t>(st, "nested_blocksize", where) != kNf4ScaleBlock) raise(where, "nested_blocksize", "expected ", kNf4ScaleBlock);
    const auto shape = io::json_get<std::vector<int64_t>>(st, "shape", where);
    if (shape != std::vector<int64_t>{p->out_features, p->in_features})
      raise(where, "shape", "[", shape[0], ", ", shape.size() > 1 ? shape[1] : 0, "], expected [", p->out_features, ", ", p->in_features, "]");
    if (!torch::equal(src.tensor(w + ".quant_map").to(torch::kFloat32).view({-1}), levels))
      raise(src.file_of(w), w + ".quant_map", "is not the NF4 code");
    if (!torch::equal(src.tensor(w + ".nested_quant_map").to(torch::kFloat32).view({-1}), dynamic8_code()))
      raise(src.file_of(w), w + ".nested_quant_map", "is not bitsandbytes' signed dynamic 8-bit code");
    Nf4Weight q;
    q.double_quant = Nf4DoubleQuant::kDynamic8;
    q.shape = shape;
    q.numel = shape[0] * shape[1];
    const int64_t blocks = (q.numel + kNf4Block - 1) / kNf4Block;
    q.codes = src.tensor(w).to(torch::kUInt8).reshape({-1}).contiguous();
    q.absmax_q = src.tensor(w + ".absmax").to(torch::kUInt8).reshape({-1}).contiguous();
    q.absmax_scale = src.tensor(w + ".nested_absmax").to(torch::kFloat32).reshape({-1}).contiguous();
    q.absmax_offset = io::json_get<double>(st, "nested_offset", where);
    if (q.codes.numel() != (q.numel + 1) / 2 || q.absmax_q.numel() != blocks ||
        q.absmax_scale.numel() != (blocks + kNf4ScaleBlock - 1) / kNf4ScaleBlock)
      raise(src.file_of(w), w, "packed sizes do not match shape [", shape[0], ", ", shape[1], "]");
    q.codes = q.codes.to(device);
    q.absmax_q = q.absmax_q.to(device);
    q.absmax_scale = q.absmax_scale.to(device);
    p->set_nf4(q, dtype);
    filled.insert(w);
    ignore.push_back(w);
    ignore.push_back(w + ".");
  }
  if (filled.empty()) raise(cfg_path, "quantization_config", "says bitsandbytes 4-bit, but no quantised weight is in the checkpoint");
  return filled;
}

}  // namespace

LlamaForCausalLM load_llama(const std::string& dir, torch::ScalarType dtype, torch::Device device, const io::FolderPart& part) {
  std::string cfg_path;
  auto j = io::part_config(dir, part, io::llama_config_defaults(), cfg_path);
  if (io::detect_model_kind(j, cfg_path) != io::ModelKind::kLlama)
    raise(cfg_path, "model_type", "is not a Llama model");
  auto cfg = io::LlamaConfig::from_json(j, cfg_path);
  LlamaForCausalLM m(cfg, torch::TensorOptions().dtype(dtype).device(device));
  std::vector<std::string> ignore = {"rotary_emb.inv_freq"};
  if (cfg.tie_word_embeddings) ignore.push_back("lm_head.weight");
  ignore.insert(ignore.end(), part.ignore.begin(), part.ignore.end());
  const std::string share_key = WeightShare::key(dir, "llm|" + part.prefix, dtype, device);
  if (!j.contains("quantization_config") && WeightShare::attach(*m, share_key)) {  // already in memory: shared
    m->eval();
    return m;
  }
  auto src = io::TensorSource::open(dir);
  std::set<std::string> filled;
  if (j.contains("quantization_config") && j["quantization_config"].is_object()) {
    const auto& qc = j["quantization_config"];
    const auto method = io::json_get_or<std::string>(qc, "quant_method", "", cfg_path);
    if (method != "bitsandbytes" || !io::json_get_or<bool>(qc, "load_in_4bit", false, cfg_path))
      raise(cfg_path, "quantization_config", "only bitsandbytes 4-bit (NF4) checkpoints are read, got quant_method '", method, "'");
    filled = load_bnb_nf4(*m, src, qc, cfg_path, dtype, device, ignore);
  }
  load_strict(*m, src, ignore, part.prefix, filled);
  if (filled.empty()) WeightShare::add(*m, share_key);
  m->eval();
  return m;
}

void save_hf_llama(const LlamaForCausalLMImpl& lm, const std::string& tokenizer_dir, const std::string& out,
                   const std::vector<std::pair<std::string, torch::Tensor>>& tensors_in, const nlohmann::json& config) {
  namespace fs = std::filesystem;
  fs::create_directories(out);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = tensors_in;
  if (tensors.empty())
    for (const auto& p : lm.named_parameters()) tensors.emplace_back(p.key(), p.value());
  io::write_safetensors(out + "/model.safetensors", tensors, {{"format", "pt"}});
  io::write_text_atomic(out + "/config.json", (config.is_null() ? lm.config().to_json() : config).dump(2) + "\n");
  for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    auto src = fs::path(tokenizer_dir) / f;
    if (fs::exists(src)) fs::copy_file(src, fs::path(out) / f, fs::copy_options::overwrite_existing);
  }
}

}  // namespace vadapt::model
