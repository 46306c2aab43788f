// LaVIN against the official code (../shared/golden/lavin, see its README): the router alone,
// the vision tower with router adapters (official batch-0 routing, and token-by-token routing =
// the official result for one image at a time), the full training forward on an image and a
// text-only sample (inputs, routing weights, logits of every row, loss), and the cached decode
// (official positions: the official logits and tokens; default: the full recompute's logits).
// The official adapter files are loaded through Lavin::load_official. Tolerance 1e-4 on
// logits / taps / embeddings, 1e-5 on routing weights (the README's).
#include <gtest/gtest.h>

#include "fixtures.h"
#include "common/error.h"
#include "io/hf_config.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "methods/lavin.h"
#include "model/llama.h"
#include "text/prompt.h"
#include "vision/vision_tower.h"
#include "vlm/vision_language_model.h"

using namespace vadapt;
using vadapt::test::shared_dir;
using vadapt::test::tensors_close;

namespace {
std::string G(const std::string& rel) { return shared_dir() + "/golden/lavin/" + rel; }

void expect_close(const std::string& what, const torch::Tensor& got, const torch::Tensor& want, double atol) {
  auto r = tensors_close(got, want, atol);
  std::printf("[ golden   ] LaVIN %s: %s\n", what.c_str(), r.message());
  EXPECT_TRUE(r) << what;
}

struct Lavin {
  model::LlamaForCausalLM lm{nullptr};
  std::shared_ptr<vision::VisionTower> tower;
  methods::Lavin method;
  Lavin(const std::string& vision_routing, const std::string& decode_positions) {
    lm = model::load_llama(G("tiny-llama"), torch::kFloat32, torch::kCPU);
    tower = vision::load_vision_tower(G("tiny-clip-vision"), torch::kFloat32, torch::kCPU);
    method.configure({{"adapter_dim", 8}, {"adapter_groups", 2}, {"adapter_scale", 1.0}, {"temperature", 10.0}, {"adapter_dropout", 0.1},
                      {"tap_every", 4}, {"hidden_proj", 128}, {"vision_routing", vision_routing}, {"decode_positions", decode_positions}},
                     "golden");
    method.build(methods::Frozen{lm, tower, torch::kCPU}, 0);
    method.train_mode(false);
  }
  // The tensors of a golden file that holds only part of the adapters (official names).
  void load_part(const std::string& file) {
    auto g = io::SafeTensorsFile::open(G(file));
    torch::NoGradGuard ng;
    int n = 0;
    for (auto& [name, t] : method.state())
      if (g->contains(name)) t.copy_(g->tensor(name).to(torch::kFloat32).squeeze(-1).view(t.sizes())), ++n;
    ASSERT_GT(n, 0) << file;
  }
  torch::Tensor taps(const torch::Tensor& pixels) { return method.feature_select().select(tower->encode(pixels)); }
};

// ids with kImageToken where the official sequence has the visual tokens.
torch::Tensor with_placeholders(torch::Tensor ids, int64_t row, int64_t from, int64_t n) {
  ids = ids.clone();
  ids[row].narrow(0, from, n).fill_(text::kImageToken);
  return ids;
}
}  // namespace

TEST(GoldenLavin, RouterAloneMatchesTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::SafeTensorsFile::open(G("router.safetensors"));
  auto gen = at::detail::createCPUGenerator(0);
  adapters::RouterOptions o;  // dim 8, groups 2, scale 1, t 10
  adapters::RouterAdapter r(64, o, gen);
  r->eval();
  torch::NoGradGuard ng;
  for (auto& p : r->named_parameters()) p.value().copy_(g->tensor(p.key()).to(torch::kFloat32).squeeze(-1).view(p.value().sizes()));
  auto x = g->tensor("input");
  auto w = r->route(x.select(1, 0));
  expect_close("router weights", w, g->tensor("routing_weights"), 1e-5);
  expect_close("router output", r->forward(x, w.unsqueeze(1)), g->tensor("output"), 1e-4);
  expect_close("router output, given weights", r->forward(x, g->tensor("given_weights").unsqueeze(1)), g->tensor("output_given_weights"), 1e-4);
}

TEST(GoldenLavin, VisionTowerWithRoutersMatchesTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::SafeTensorsFile::open(G("vision.safetensors"));
  auto px = g->tensor("pixel_values");
  torch::NoGradGuard ng;
  {  // official: image 0 routes both images, token by token
    Lavin v("official", "recompute");
    v.load_part("vision.safetensors");
    auto taps = v.taps(px);
    expect_close("vision CLS taps (official batch-0 routing)", taps, g->tensor("cls_taps"), 1e-4);
    expect_close("visual tokens (official batch-0 routing)", v.method.visual_tokens(taps), g->tensor("image_embeds"), 1e-4);
    // The quirk itself: image 1 depends on its batch neighbour.
    EXPECT_FALSE(tensors_close(v.taps(px.narrow(0, 1, 1)), taps.narrow(0, 1, 1), 1e-2));
  }
  {  // token by token: the official result for one image at a time, and batch-invariant
    Lavin v("per_token", "recompute");
    v.load_part("vision.safetensors");
    auto taps = v.taps(px);
    for (int i = 0; i < 2; ++i) {
      expect_close(cat("vision CLS taps of image ", i, " alone (per-token routing)"), taps.narrow(0, i, 1), g->tensor(cat("single.", i, ".cls_taps")), 1e-4);
      expect_close(cat("visual tokens of image ", i, " alone"), v.method.visual_tokens(taps.narrow(0, i, 1)),
                   g->tensor(cat("single.", i, ".image_embeds")), 1e-4);
    }
  }
  {  // default (each image routed by its own CLS): batched = one at a time
    Lavin v("per_image", "recompute");
    v.load_part("vision.safetensors");
    auto taps = v.taps(px);
    for (int i = 0; i < 2; ++i) EXPECT_TRUE(tensors_close(v.taps(px.narrow(0, i, 1)), taps.narrow(0, i, 1), 1e-5)) << i;
    auto swapped = v.taps(px.flip(0)).flip(0);
    EXPECT_TRUE(tensors_close(swapped, taps, 1e-5));
  }
}

// The training forward: [mod, BOS, "Image: ", img0, img1, text] and [mod, BOS, "Image: N/A", text];
// vadapt runs rows 1.. at positions 1.. with the routing weights of a one-token modality forward.
TEST(GoldenLavin, TrainingForwardMatchesTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::SafeTensorsFile::open(G("train_forward.safetensors"));
  Lavin v("official", "recompute");
  v.method.load_official(G("train_forward.safetensors"));
  torch::NoGradGuard ng;
  auto px = g->tensor("pixel_values");  // [image, zeros]: the official batch routes by image 0
  auto taps = v.taps(px);
  expect_close("training CLS taps", taps, g->tensor("cls_taps"), 1e-4);
  expect_close("training visual tokens", v.method.visual_tokens(taps), g->tensor("image_embeds"), 1e-4);
  // Our sequences: the official rows 1..19.
  auto ex = g->tensor("examples");  // (2, 20)
  auto pre_img = g->tensor("prefix_img"), pre_txt = g->tensor("prefix_nonimg");
  auto bos = torch::ones({1}, torch::kInt64);
  auto row0 = torch::cat({bos, pre_img, torch::full({2}, text::kImageToken, torch::kInt64), ex[0].narrow(0, 1, 13)});
  auto row1 = torch::cat({bos, pre_txt, ex[1].narrow(0, 1, 13)});
  auto ids = torch::stack({row0, row1});  // (2, 19)
  auto in = v.method.prepare(ids, taps.narrow(0, 0, 1), torch::zeros({1}, torch::kInt64));
  expect_close("training inputs_embeds (rows 1..)", in.embeds, g->tensor("inputs_embeds").narrow(1, 1, 19), 1e-4);
  for (int l = 0; l < 4; ++l)
    expect_close(cat("routing weights of layer ", l), in.state.kept.at(cat("lavin.llm.", l, ".attn")), g->tensor(cat("routing_weights.layer.", l)), 1e-5);
  model::ForwardContext ctx;
  ctx.adapter_state = &in.state;
  auto logits = v.lm->logits(v.lm->forward_embeds(in.embeds, ctx));  // (2, 19, V)
  // Row 0: the modality token's own logits, from its one-token forward.
  model::ForwardContext c0;
  auto mod = v.method.modality_embedding().index_select(0, g->tensor("img_indicators")).unsqueeze(1);
  auto row_mod = v.lm->logits(v.lm->forward_embeds(mod, c0));  // (2, 1, V)
  expect_close("training logits (every row)", torch::cat({row_mod, logits}, 1), g->tensor("logits"), 1e-4);
  // Loss as the official code: CE over the shifted labels, 0 = ignore.
  auto lab = g->tensor("shifted_labels");  // (2, 19)
  auto all = torch::cat({row_mod, logits}, 1).narrow(1, 0, 19).reshape({-1, 512});
  auto loss = torch::nn::functional::cross_entropy(all, lab.reshape({-1}), torch::nn::functional::CrossEntropyFuncOptions().ignore_index(0));
  expect_close("training loss", loss.view({1}), g->tensor("loss"), 1e-5);
}

namespace {
// Greedy decode of the golden prompts: per-step logits (2, 5, V) and tokens; with `forced`, the
// official generated tokens are fed instead (the full recompute ran on those).
std::pair<torch::Tensor, torch::Tensor> decode(Lavin& v, const io::SafeTensorsFile& g, bool forced = false) {
  auto px = g.tensor("pixel_values");
  auto taps = v.taps(px);
  auto ids = with_placeholders(g.tensor("prompt_tokens"), 0, 4, 2);
  auto in = v.method.prepare(ids, taps.narrow(0, 0, 1), torch::zeros({1}, torch::kInt64));
  auto cache = v.lm->make_cache(2, 20);
  model::ForwardContext ctx;
  ctx.cache = &cache;
  ctx.adapter_state = &in.state;
  auto last = v.lm->logits(v.lm->forward_embeds(in.embeds, ctx)).select(1, 11);  // (2, V)
  std::vector<torch::Tensor> logits{last}, tokens{last.argmax(-1)};
  for (int s = 1; s < 5; ++s) {
    auto next = forced ? g.tensor("generated_tokens").select(1, s - 1) : tokens.back();
    last = v.lm->logits(v.lm->forward_embeds(v.lm->embed(next.reshape({2, 1})), ctx)).select(1, 0);
    logits.push_back(last);
    tokens.push_back(last.argmax(-1));
  }
  return {torch::stack(logits, 1), torch::stack(tokens, 1)};
}
}  // namespace

TEST(GoldenLavin, CachedDecodeMatchesTheOfficialCodeAndTheDefaultEqualsFullRecompute) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::SafeTensorsFile::open(G("decode.safetensors"));
  torch::NoGradGuard ng;
  {
    Lavin v("official", "official");
    v.method.load_official(G("decode.safetensors"));
    auto routes = v.method.modality_routes();
    auto ind = g->tensor("img_indicators");
    for (int l = 0; l < 4; ++l)
      expect_close(cat("cached routing weights of layer ", l), routes.at(cat("lavin.llm.", l, ".attn")).index_select(0, ind),
                   g->tensor(cat("cache_weights.layer.", l)), 1e-5);
    auto [logits, tokens] = decode(v, *g);
    expect_close("decode logits (official positions)", logits, g->tensor("logits"), 1e-4);
    EXPECT_TRUE(torch::equal(tokens, g->tensor("generated_tokens"))) << tokens;
  }
  {
    Lavin v("official", "recompute");
    v.method.load_official(G("decode.safetensors"));
    auto [logits, tokens] = decode(v, *g, /*forced=*/true);
    expect_close("decode logits (default) = the official full recompute", logits, g->tensor("full_recompute.logits"), 1e-4);
  }
}

TEST(GoldenLavin, ParameterCountsOnLlama7b13bAndClipL14Configs) {
  VADAPT_REQUIRE_SHARED();
  const std::string refs = shared_dir() + "/reference/configs/";
  auto vision = methods::VisionDims::from_config_dir(refs + "clip-vit-large-patch14");
  methods::Lavin m;
  m.configure(nlohmann::json::object(), "defaults");
  auto c7 = m.count(io::LlamaConfig::from_json(io::read_json(refs + "llama-7b/config.json"), "7b"), vision);
  EXPECT_EQ(c7["llm_adapter_parameters"].get<int64_t>(), 2621760);
  EXPECT_EQ(c7["vision_adapter_parameters"].get<int64_t>(), 491760);
  EXPECT_EQ(c7["connector_parameters"].get<int64_t>(), 659584);
  EXPECT_EQ(c7["modality_parameters"].get<int64_t>(), 8192);
  EXPECT_EQ(c7["trainable_parameters"].get<int64_t>(), 3781296);
  EXPECT_EQ(c7["visual_tokens"].get<int64_t>(), 6);
  auto c13 = m.count(io::LlamaConfig::from_json(io::read_json(refs + "llama-13b/config.json"), "13b"), vision);
  EXPECT_EQ(c13["trainable_parameters"].get<int64_t>(), 5390080);
  std::printf("[ golden   ] LaVIN trainable parameters: 7B %lld, 13B %lld\n", static_cast<long long>(c7["trainable_parameters"].get<int64_t>()),
              static_cast<long long>(c13["trainable_parameters"].get<int64_t>()));
}
