// Trainer loop, optimizer groups, logging and checkpoints.
#include "train/trainer.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <random>

#include <unistd.h>

#include "common/error.h"
#include "methods/registry.h"
#include "common/log.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/load.h"
#include "train/lr_schedule.h"
#include "train/plot.h"
#include "train/precision.h"

namespace vadapt::train {
namespace fs = std::filesystem;

std::vector<std::string> list_checkpoints(const std::string& out_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  if (!fs::is_directory(out_dir)) return {};
  for (const auto& e : fs::directory_iterator(out_dir)) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("checkpoint-", 0) == 0 && fs::exists(e.path() / "trainer_state.json")) {
      try {
        found.emplace_back(std::stoll(n.substr(11)), e.path().string());
      } catch (...) {
      }
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

Trainer::Trainer(vlm::VisionLanguageModel& model, std::vector<data::Sample> train, std::vector<data::Sample> val, TrainConfig cfg)
    : m_(model), train_(std::move(train)), val_(std::move(val)), cfg_(std::move(cfg)) {
  if (train_.empty()) throw VadaptError("train: the training set is empty");
  if (cfg_.batch_size <= 0 || cfg_.grad_accum <= 0) throw VadaptError("train: batch_size and grad_accum must be positive");
  if (cfg_.out_dir.empty()) throw VadaptError("train: an output folder is required (--out)");
  for (const auto* set : {&train_, &val_})  // before training starts, not mid-epoch
    for (const auto& s : *set)
      if (!s.frames.empty()) methods::check_images_per_input(m_.method(), s.frames.size() + 1, "sample " + s.id, "sample");
  prescan(train_, "training");
  if (train_.empty()) throw VadaptError("train: no training sample is left after the pre-scan");
  prescan(val_, "validation");
}

namespace {
// How an encoded prompt fits max_seq_len: where its image tokens end and whether an answer
// token is left within the first `max` positions.
struct Fit {
  int64_t image_end = 0;  // one past the last image token (0: none)
  bool answer_kept = false;
};
Fit fit_of(const text::EncodedPrompt& e, int64_t max) {
  Fit f;
  for (size_t i = 0; i < e.ids.size(); ++i)
    if (e.ids[i] == text::kImageToken) f.image_end = static_cast<int64_t>(i) + 1;
  const auto end = e.labels.begin() + std::min<int64_t>(max, static_cast<int64_t>(e.labels.size()));
  f.answer_kept = std::any_of(e.labels.begin(), end, [](int64_t l) { return l != text::kIgnore; });
  return f;
}

std::string where_is(const data::Sample& s) { return s.origin.empty() ? "sample " + s.id : cat(s.origin, " (id ", s.id, ")"); }

// Up to `n` findings, one per line.
std::string listing(const std::vector<std::string>& lines, size_t n = 8) {
  std::string out;
  for (size_t i = 0; i < lines.size() && i < n; ++i) out += "\n  " + lines[i];
  if (lines.size() > n) out += cat("\n  ... and ", lines.size() - n, " more");
  return out;
}
}  // namespace

void Trainer::prescan(std::vector<data::Sample>& set, const std::string& what) {
  if (set.empty()) return;
  Stopwatch sw;
  std::vector<std::string> bad, long_lines;
  std::vector<char> drop(set.size(), 0);
  int64_t longest = 0, n_long = 0, n_bad = 0;
  for (size_t i = 0; i < set.size(); ++i) {
    const auto& s = set[i];
    try {
      auto e = encode_full(s);
      const auto n = static_cast<int64_t>(e.ids.size());
      if (n <= cfg_.max_seq_len) continue;
      const Fit f = fit_of(e, cfg_.max_seq_len);
      if (f.image_end > cfg_.max_seq_len)
        throw VadaptError(cat(n, " tokens: its image tokens end at position ", f.image_end, ", beyond max_seq_len ", cfg_.max_seq_len));
      if (!f.answer_kept && cfg_.long_samples != "skip")
        throw VadaptError(cat(n, " tokens: max_seq_len ", cfg_.max_seq_len, " would cut away every answer token"));
      ++n_long;
      longest = std::max(longest, n);
      long_lines.push_back(cat(where_is(s), ": ", n, " tokens"));
      if (cfg_.long_samples == "skip") drop[i] = 1;
    } catch (const VadaptError& e) {
      ++n_bad;
      drop[i] = 1;
      bad.push_back(cat(where_is(s), ": ", e.what()));
    }
  }
  const double secs = sw.seconds();
  const bool lead = rank() == 0;
  if (lead && secs > 2) log_info(cat("pre-scan: encoded ", set.size(), " ", what, " samples in ", secs, " s"));
  if (n_long > 0 && cfg_.long_samples == "error")
    throw VadaptError(cat(what, " data: ", n_long, " of ", set.size(), " samples are longer than train.max_seq_len ", cfg_.max_seq_len,
                          " tokens (longest ", longest, "); raise max_seq_len or set train.long_samples: truncate | skip", listing(long_lines)));
  if (n_bad > 0 && !cfg_.skip_bad)
    throw VadaptError(cat(what, " data: ", n_bad, " of ", set.size(), " samples cannot be trained (set data.skip_bad: true, or "
                          "--skip-bad, to drop them):", listing(bad)));
  if (lead && n_bad > 0) log_warn(cat(what, " data: skipped ", n_bad, " of ", set.size(), " samples that cannot be trained:", listing(bad, 3)));
  if (lead && n_long > 0)
    log_warn(cat(what, " data: ", n_long, " of ", set.size(), " samples are longer than train.max_seq_len ", cfg_.max_seq_len, " tokens (longest ",
                 longest, "), ", cfg_.long_samples == "skip" ? "skipped" : "truncated from the end",
                 " (train.long_samples: truncate | skip | error):", listing(long_lines, 3)));
  if (n_bad == 0 && (n_long == 0 || cfg_.long_samples != "skip")) return;
  std::vector<data::Sample> kept;
  kept.reserve(set.size());
  for (size_t i = 0; i < set.size(); ++i)
    if (!drop[i]) kept.push_back(std::move(set[i]));
  set = std::move(kept);
}

text::EncodedPrompt Trainer::encode_full(const data::Sample& s) const {
  auto segs = m_.chat_template().segments(s.conv, false);
  auto e = text::encode_segments(m_.tokenizer(), segs, m_.image_tokens());
  if (s.image.empty() && e.num_images > 0) throw VadaptError(cat("sample ", s.id, ": <image> in a text-only sample"));
  if (!s.image.empty() && e.num_images != 1)
    throw VadaptError(cat("sample ", s.id, ": expected exactly one <image> in the prompt, found ", e.num_images));
  return e;
}

text::EncodedPrompt Trainer::encode(const data::Sample& s) const {
  auto e = encode_full(s);
  if (static_cast<int64_t>(e.ids.size()) > cfg_.max_seq_len) {
    // Truncate from the end; never cut through the image tokens.
    const Fit f = fit_of(e, cfg_.max_seq_len);
    if (f.image_end > cfg_.max_seq_len)
      throw VadaptError(cat("sample ", s.id, ": image tokens end at position ", f.image_end, ", beyond max_seq_len ", cfg_.max_seq_len));
    const size_t full = e.ids.size();
    e.ids.resize(static_cast<size_t>(cfg_.max_seq_len));
    e.labels.resize(static_cast<size_t>(cfg_.max_seq_len));
    // A sample cut before its answer trains (or scores) nothing: say so, never silently.
    if (!f.answer_kept) {
      if (no_targets_++ == 0 && rank() == 0)
        log_warn(cat("sample ", s.id, ": ", full, " tokens, max_seq_len ", cfg_.max_seq_len,
                     ": truncation leaves no answer token to learn from (raise train.max_seq_len); further such samples are counted"));
    }
  }
  return e;
}

vlm::Batch Trainer::make_batch(const std::vector<data::Sample>& data, const std::vector<size_t>& idx) const {
  std::vector<text::EncodedPrompt> prompts;
  std::vector<std::vector<std::string>> images;
  for (size_t i : idx) {
    prompts.push_back(encode(data[i]));
    auto& row = images.emplace_back();
    if (!data[i].image.empty()) row.push_back(data[i].image);
    row.insert(row.end(), data[i].frames.begin(), data[i].frames.end());
  }
  return m_.collate(prompts, images);
}

std::vector<size_t> Trainer::epoch_order(int64_t epoch) const {
  std::vector<size_t> order(train_.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(cfg_.seed * 1000003ull + static_cast<uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  if (!cfg_.group_by_modality_length) return order;
  return group_by_modality(train_, order, static_cast<size_t>(cfg_.batch_size * world()), rng);
}

std::vector<size_t> group_by_modality(const std::vector<data::Sample>& data, const std::vector<size_t>& shuffled, size_t megabatch,
                                      std::mt19937_64& rng) {
  // length = words of the conversation (+128 with an image), as LLaVA's modality_lengths.
  auto length = [&](size_t i) {
    int64_t words = 0;
    for (const auto& t : data[i].conv.turns) {
      std::istringstream in(t.text);
      for (std::string w; in >> w;) ++words;
    }
    return words + (data[i].image.empty() ? 0 : 128);
  };
  std::vector<std::vector<size_t>> batches;
  std::vector<size_t> leftover;
  for (bool image : {true, false}) {
    std::vector<size_t> part;
    for (size_t i : shuffled)
      if (data[i].image.empty() != image) part.push_back(i);
    for (size_t at = 0; at < part.size(); at += megabatch) {
      std::vector<size_t> b(part.begin() + static_cast<long>(at), part.begin() + static_cast<long>(std::min(part.size(), at + megabatch)));
      std::stable_sort(b.begin(), b.end(), [&](size_t x, size_t y) { return length(x) > length(y); });
      if (at + megabatch >= part.size()) leftover.insert(leftover.end(), b.begin(), b.end());
      else batches.push_back(std::move(b));
    }
  }
  std::shuffle(batches.begin(), batches.end(), rng);
  std::sort(leftover.begin(), leftover.end());
  std::vector<size_t> order;
  for (const auto& b : batches) order.insert(order.end(), b.begin(), b.end());
  order.insert(order.end(), leftover.begin(), leftover.end());
  return order;
}

double Trainer::allreduce(double v) const {
  if (!cfg_.comm) return v;
  auto t = torch::tensor({v}, torch::kFloat64);
  cfg_.comm->allreduce_sum({t});
  return t.item<double>();
}

double Trainer::evaluate(const std::vector<data::Sample>& data, int64_t max_batches) {
  torch::NoGradGuard ng;
  m_.train_mode(false);
  AutocastGuard ac(m_.device(), parse_precision(cfg_.precision, "precision"));
  double sum = 0, count = 0;
  const size_t bs = static_cast<size_t>(cfg_.batch_size);
  int64_t batches = 0;
  for (size_t i = 0; i < data.size() && (max_batches < 0 || batches < max_batches); i += bs, ++batches) {
    if (batches % world() != rank()) continue;  // batches are dealt round-robin over the ranks
    std::vector<size_t> idx;
    for (size_t j = i; j < std::min(data.size(), i + bs); ++j) idx.push_back(j);
    auto r = m_.loss(make_batch(data, idx));
    sum += r.loss_sum;
    count += static_cast<double>(r.target_tokens);
  }
  sum = allreduce(sum);
  count = allreduce(count);
  return count > 0 ? sum / count : 0.0;
}

namespace {

// The dropout RNG streams: the CPU generator, and the CUDA one when training there.
std::vector<std::pair<std::string, torch::Tensor>> rng_state(torch::Device device) {
  std::vector<std::pair<std::string, torch::Tensor>> s{{"torch_cpu", at::detail::getDefaultCPUGenerator().get_state()}};
  if (device.is_cuda()) s.emplace_back("torch_cuda", at::globalContext().defaultGenerator(device).get_state());
  return s;
}

std::string rng_file(int rank, int world) {
  return world == 1 ? "/rng_state.safetensors" : "/rng_state_rank" + std::to_string(rank) + ".safetensors";
}

std::string format_duration(double s) {
  char b[32];
  if (!std::isfinite(s) || s < 0) return "?";
  if (s >= 3600) std::snprintf(b, sizeof b, "%dh%02dm", static_cast<int>(s / 3600), static_cast<int>(std::fmod(s, 3600) / 60));
  else if (s >= 60) std::snprintf(b, sizeof b, "%dm%02ds", static_cast<int>(s / 60), static_cast<int>(std::fmod(s, 60)));
  else std::snprintf(b, sizeof b, "%.0fs", s);
  return b;
}

// Target tokens of a batch as the loss counts them (labels shifted by one).
int64_t target_tokens(const vlm::Batch& b) {
  return b.labels.narrow(1, 1, b.labels.size(1) - 1).ne(text::kIgnore).sum().item<int64_t>();
}

}  // namespace

namespace {
// Rewrites metrics.csv (atomically) without its rows of steps after `step`.
void keep_metrics_up_to(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string out, line;
  bool header = true;
  long fields = 0;
  while (std::getline(in, line)) {
    const long commas = std::count(line.begin(), line.end(), ',');
    if (header) fields = commas;
    else if (commas != fields) continue;  // a row cut by the kill
    if (!header) {
      int64_t s = -1;
      try {
        s = std::stoll(line.substr(0, line.find(',')));
      } catch (...) {
        continue;  // a row cut by the kill
      }
      if (s > step) continue;
    }
    header = false;
    out += line + "\n";
  }
  io::write_text_atomic(path, out);
}
}  // namespace

void Trainer::save_checkpoint(int64_t step, torch::optim::Optimizer& opt) const {
  const std::string final_dir = cfg_.out_dir + "/checkpoint-" + std::to_string(step);
  const std::string tmp = cfg_.out_dir + "/.tmp-checkpoint-" + std::to_string(step);
  const bool lead = rank() == 0;
  if (lead) {
    io::remove_tree(tmp);
    fs::create_directories(tmp);
  }
  if (cfg_.comm) cfg_.comm->barrier();  // the folder exists before every rank writes its RNG state
  io::write_safetensors(tmp + rng_file(rank(), world()), rng_state(m_.device()));
  if (cfg_.comm) cfg_.comm->barrier();
  if (!lead) return;
  try {
    m_.save_adapter(tmp);
    try {
      torch::save(opt, tmp + "/optimizer.pt");
    } catch (const c10::Error& e) {  // libtorch names only the entry inside the archive
      raise(tmp + "/optimizer.pt", "", "cannot write the optimizer state: ", e.what_without_backtrace());
    }
    nlohmann::json st = {{"step", step}, {"seed", cfg_.seed}, {"batch_size", cfg_.batch_size}, {"grad_accum", cfg_.grad_accum},
                         {"world_size", world()}, {"train_samples", train_.size()}};
    io::write_text_atomic(tmp + "/trainer_state.json", st.dump(2));  // written last: marks the folder complete
  } catch (...) {
    // A full disk or a write error: nothing partial stays behind, the earlier checkpoints are
    // untouched, and the error (naming the file) stops the run.
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  io::remove_tree(final_dir);
  fs::rename(tmp, final_dir);
  auto all = list_checkpoints(cfg_.out_dir);
  for (size_t i = 0; cfg_.keep_last > 0 && all.size() > static_cast<size_t>(cfg_.keep_last) && i < all.size() - cfg_.keep_last; ++i)
    io::remove_tree(all[i]);
  log_info(cat("saved ", final_dir));
}

int64_t Trainer::load_checkpoint(const std::string& dir, torch::optim::Optimizer& opt) {
  const std::string state_file = dir + "/trainer_state.json";
  auto st = io::read_json(state_file);
  int64_t step = io::json_get<int64_t>(st, "step", state_file);
  if (io::json_get<int64_t>(st, "batch_size", state_file) != cfg_.batch_size || io::json_get<int64_t>(st, "grad_accum", state_file) != cfg_.grad_accum ||
      io::json_get<uint64_t>(st, "seed", state_file) != cfg_.seed)
    raise(state_file, "batch_size", "resume needs the same batch_size, grad_accum and seed as the run that wrote it");
  const int64_t saved_world = io::json_get_or<int64_t>(st, "world_size", 1, state_file);
  if (saved_world != world())
    raise(state_file, "world_size", "the checkpoint was written by ", saved_world, " workers; resume it with the same number (now ", world(), ")");
  m_.load_adapter_weights(dir);
  torch::load(opt, dir + "/optimizer.pt");
  auto rng = io::SafeTensorsFile::open(dir + rng_file(rank(), world()));
  auto cpu_gen = at::detail::getDefaultCPUGenerator();  // a handle on the global generator
  cpu_gen.set_state(rng->tensor("torch_cpu").clone());
  if (m_.device().is_cuda() && rng->contains("torch_cuda")) {
    auto cuda_gen = at::globalContext().defaultGenerator(m_.device());
    cuda_gen.set_state(rng->tensor("torch_cuda").clone());
  }
  log_info(cat("resumed from ", dir, " at step ", step));
  return step;
}

TrainResult Trainer::fit() {
  Stopwatch total_sw;
  const bool lead = rank() == 0;
  if (lead) fs::create_directories(cfg_.out_dir);
  const Precision precision = parse_precision(cfg_.precision, "precision");
  LossScaler scaler(precision == Precision::kFp16);
  const int64_t N = static_cast<int64_t>(train_.size());
  const int64_t micro_global = cfg_.batch_size * world();  // one micro-batch over all ranks
  const int64_t global_batch = micro_global * cfg_.grad_accum;
  const int64_t micro_per_epoch = (N + micro_global - 1) / micro_global;
  const int64_t steps_per_epoch = std::max<int64_t>(1, micro_per_epoch / cfg_.grad_accum);
  const int64_t total_steps = cfg_.max_steps > 0 ? cfg_.max_steps : steps_per_epoch * cfg_.epochs;
  const int64_t warmup = cfg_.warmup_epochs >= 0
                             ? static_cast<int64_t>(std::floor(cfg_.warmup_epochs * static_cast<double>(steps_per_epoch)))
                             : static_cast<int64_t>(std::ceil(cfg_.warmup_ratio * static_cast<double>(total_steps)));  // as HF
  const double base_lr = cfg_.blr > 0 ? cfg_.blr * static_cast<double>(global_batch) / 256.0 : cfg_.lr;
  auto info = [&](const std::string& msg) {
    if (lead) log_info(msg);
  };

  // Optimizer groups: per trainable group, decay / no-decay (1-D tensors: biases, norms).
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> group_lr;
  std::vector<torch::Tensor> all_params;
  TrainResult res;
  auto trainable = m_.trainable_groups();
  for (const auto& [name, lr] : cfg_.lr_groups) {
    std::string all;
    bool found = false;
    for (const auto& g : trainable) found = found || g.name == name, all += (all.empty() ? "" : ", ") + g.name;
    if (!found) throw VadaptError(cat("train.lr_groups: no trainable parameter group '", name, "' (this stage trains: ", all, ")"));
    if (!(lr > 0)) throw VadaptError(cat("train.lr_groups.", name, ": must be positive, got ", lr));
  }
  // Groups that learn only from one kind of sample (joint training with disjoint parameters):
  // each micro-batch is split by kind, and a group is frozen for the parts of the other kind.
  bool disjoint = false;
  for (const auto& g : trainable) disjoint = disjoint || g.data != methods::DataKind::kAny;
  for (auto& group : trainable) {
    const auto& name = group.name;
    auto& params = group.params;
    double lr = (group.connector && cfg_.lr_projector > 0) ? cfg_.lr_projector : base_lr;
    if (auto it = cfg_.lr_groups.find(name); it != cfg_.lr_groups.end()) lr = it->second;
    std::vector<torch::Tensor> decay, no_decay;
    for (auto& p : params) {
      if (p.scalar_type() != torch::kFloat32)
        throw VadaptError(cat("train: trainable parameters must be float32 (mixed precision keeps fp32 master weights); group ", name,
                              " has ", p.scalar_type(), " (set dtype: float32 for what trains)"));
      (p.dim() <= 1 ? no_decay : decay).push_back(p), all_params.push_back(p);
    }
    for (auto* set : {&decay, &no_decay}) {
      if (set->empty()) continue;
      auto o = std::make_unique<torch::optim::AdamWOptions>(lr);
      o->betas({cfg_.beta1, cfg_.beta2}).eps(cfg_.eps).weight_decay(set == &decay ? cfg_.weight_decay : 0.0);
      groups.emplace_back(*set, std::move(o));
      group_lr.push_back(lr);
    }
  }
  if (all_params.empty()) throw VadaptError("train: nothing to train (no parameter requires grad)");
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(base_lr));
  for (const auto& p : all_params) res.trainable += p.numel();
  res.total = res.trainable + model::count_parameters(*m_.lm()).total - m_.method().trained_base_parameters() +
              (m_.has_vision() ? model::count_parameters(m_.tower().module()).total : 0);
  info(cat("method ", m_.spec().method, " | ", m_.method().describe(), " | template ", m_.spec().template_name, " | device ", m_.device().str(), " | precision ", precision_name(precision),
           world() > 1 ? cat(" | ", world(), " data-parallel workers") : std::string()));
  info(cat("parameters: total ", human_count(res.total), ", trainable ", human_count(res.trainable), " (",
           100.0 * res.trainable / std::max<int64_t>(1, res.total), "%)"));
  info(cat("data: ", train_.size(), " train / ", val_.size(), " val samples | batch ", cfg_.batch_size,
           world() > 1 ? cat(" x ", world(), " workers") : std::string(), " x accum ", cfg_.grad_accum, " = ", global_batch, " | ",
           total_steps, " steps (", steps_per_epoch, "/epoch) | lr ", base_lr, " ", cfg_.schedule, ", warmup ", warmup));

  int64_t step = 0;
  if (!cfg_.resume.empty()) {
    std::string dir = cfg_.resume;
    if (dir == "latest") {
      auto all = list_checkpoints(cfg_.out_dir);
      if (all.empty()) throw VadaptError(cat("--resume latest: no checkpoint under ", cfg_.out_dir));
      dir = all.back();
    }
    step = load_checkpoint(dir, opt);
  }
  if (cfg_.resume.empty()) torch::manual_seed(cfg_.seed + 17 + static_cast<uint64_t>(rank()));  // dropout stream; a resume restored it above
  if (m_.feature_cache()) info("vision features: cached (frozen tower runs once per image)");
  if (!val_.empty() && step == 0) {
    res.val_loss_before = evaluate(val_, cfg_.eval_batches);
    info(cat("val loss before training: ", res.val_loss_before));
  }
  std::ofstream csv;
  if (lead) {
    // A resumed run drops the rows a killed run logged after its checkpoint, so the file ends up
    // as the uninterrupted run's (the same steps once each).
    if (step > 0) keep_metrics_up_to(cfg_.out_dir + "/metrics.csv", step);
    csv.open(cfg_.out_dir + "/metrics.csv", step == 0 ? std::ios::trunc : std::ios::app);
    if (step == 0) csv << "step,epoch,loss,lr,grad_norm,ms_per_step,tokens_per_s,images_per_s,val_loss\n";
  }
  std::vector<CurvePoint> curve, val_curve;
  if (res.val_loss_before >= 0) val_curve.push_back({0, res.val_loss_before});
  const bool bar = cfg_.progress && lead && ::isatty(2) && log_level() >= LogLevel::kInfo;
  auto clear_bar = [&] {
    if (bar) std::fputs("\r\x1b[K", stderr);
  };

  double window_loss = 0, window_tokens = 0, window_images = 0, window_gn = 0;
  int64_t window_steps = 0;
  Stopwatch window_sw, run_sw;
  const int64_t start_step = step;
  while (step < total_steps) {
    m_.train_mode(true);
    const int64_t epoch = step / steps_per_epoch;
    const auto order = epoch_order(epoch);
    const double mult = lr_multiplier(cfg_.schedule, step, total_steps, warmup);
    auto& pgs = opt.param_groups();
    for (size_t g = 0; g < pgs.size(); ++g)
      static_cast<torch::optim::AdamWOptions&>(pgs[g].options()).lr(group_lr[g] * mult);
    opt.zero_grad();
    // This rank's micro-batches of the step; the loss is normalised by the step's target tokens
    // over all micro-batches and ranks, so 1 worker x batch 2B equals 2 workers x batch B.
    std::vector<vlm::Batch> batches;
    std::vector<methods::DataKind> batch_kind;
    double local_tokens = 0;
    for (int64_t a = 0; a < cfg_.grad_accum; ++a) {
      const int64_t micro = ((step % steps_per_epoch) * cfg_.grad_accum + a) % micro_per_epoch;
      const int64_t lo = micro * micro_global + rank() * cfg_.batch_size;
      std::vector<size_t> idx;
      for (int64_t j = lo; j < std::min<int64_t>(lo + cfg_.batch_size, N); ++j) idx.push_back(order[static_cast<size_t>(j)]);
      if (idx.empty()) continue;  // the epoch's last global micro-batch may leave a rank without samples
      std::vector<std::pair<methods::DataKind, std::vector<size_t>>> parts{{methods::DataKind::kAny, idx}};
      if (disjoint) {
        parts = {{methods::DataKind::kImage, {}}, {methods::DataKind::kText, {}}};
        for (auto i : idx) parts[train_[i].image.empty() ? 1 : 0].second.push_back(i);
      }
      for (auto& [kind, part] : parts) {
        if (part.empty()) continue;
        batches.push_back(make_batch(train_, part));
        batch_kind.push_back(kind);
        local_tokens += static_cast<double>(target_tokens(batches.back()));
      }
    }
    const double step_tokens = std::max(1.0, allreduce(local_tokens));
    double local_sum = 0;
    std::vector<double> touched(trainable.size(), 0.0);  // per group: whether a part of its kind was in this step
    for (size_t bi = 0; bi < batches.size(); ++bi) {
      auto& batch = batches[bi];
      for (size_t g = 0; g < trainable.size(); ++g) {
        const bool on = trainable[g].data == methods::DataKind::kAny || trainable[g].data == batch_kind[bi];
        if (on) touched[g] = 1.0;
        if (disjoint)
          for (auto& p : trainable[g].params) p.set_requires_grad(on);
      }
      vlm::LossResult r;
      {
        AutocastGuard ac(m_.device(), precision);
        r = m_.loss(batch);
      }
      if (r.sum.requires_grad()) (r.sum * (scaler.scale() / step_tokens)).backward();
      local_sum += r.loss_sum;
      window_tokens += static_cast<double>(batch.tokens);
      window_images += batch.pixels.defined()     ? static_cast<double>(batch.pixels.size(0))
                       : batch.features.defined() ? static_cast<double>(batch.features.size(0))
                                                  : 0.0;
    }
    batches.clear();
    if (cfg_.comm) {
      std::vector<torch::Tensor> grads;
      for (auto& p : all_params) {
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        grads.push_back(p.grad());
      }
      grads.push_back(torch::tensor({local_sum}, torch::kFloat64));
      cfg_.comm->allreduce_sum(grads);
      local_sum = grads.back().item<double>();
    }
    if (disjoint) {
      for (auto& g : trainable)
        for (auto& p : g.params) p.set_requires_grad(true);
      // A group without a part of its kind in this step (on any rank) does not step at all: no
      // zero-gradient AdamW update that would move it by momentum or weight decay.
      if (cfg_.comm) {
        auto t = torch::tensor(touched, torch::kFloat64);
        cfg_.comm->allreduce_sum({t});
        for (size_t g = 0; g < touched.size(); ++g) touched[g] = t[static_cast<int64_t>(g)].item<double>();
      }
      for (size_t g = 0; g < trainable.size(); ++g)
        if (touched[g] == 0.0)
          for (auto& p : trainable[g].params) p.mutable_grad() = torch::Tensor();
    }
    const double step_loss = local_sum / step_tokens;
    if (!std::isfinite(step_loss)) throw VadaptError(cat("train: loss is ", step_loss, " at step ", step, " (lower the lr?)"));
    const bool finite = scaler.unscale_and_check(all_params);
    double gn = 0;
    if (finite) {
      gn = cfg_.max_grad_norm > 0 ? torch::nn::utils::clip_grad_norm_(all_params, cfg_.max_grad_norm)
                                  : torch::nn::utils::clip_grad_norm_(all_params, 1e30);
      // A NaN / infinite gradient (finite loss) would turn every weight into NaN at the update:
      // stop before it, so the last checkpoint and the weights stay good.
      if (!std::isfinite(gn))
        throw VadaptError(cat("train: the gradient norm is ", gn, " at step ", step + 1, " (the loss ", step_loss,
                              " is finite); stopped before the update, so the weights and the last checkpoint under ", cfg_.out_dir,
                              " are intact (lower the lr, or resume with --resume latest)"));
      opt.step();
    } else {
      clear_bar();
      info(cat("step ", step + 1, ": fp16 gradients overflowed; step skipped, loss scale ", scaler.scale(), " -> ", scaler.scale() / 2));
    }
    scaler.update(finite);
    ++step;
    losses_.push_back(step_loss);
    res.last_loss = step_loss;
    window_loss += step_loss, window_gn += gn, ++window_steps;
    const bool last = step == total_steps;
    double val = -1;
    if (cfg_.eval_every > 0 && step % cfg_.eval_every == 0 && !val_.empty() && !last) val = evaluate(val_, cfg_.eval_batches);
    const double eta = run_sw.seconds() / static_cast<double>(step - start_step) * static_cast<double>(total_steps - step);
    if (step % cfg_.log_every == 0 || last || val >= 0) {
      const double secs = window_sw.seconds();
      const double ms = 1000.0 * secs / window_steps;
      const double lr_now = *std::max_element(group_lr.begin(), group_lr.end()) * mult;
      // Throughput over all ranks (each counts its own tokens and images).
      const double tps = allreduce(window_tokens) / secs, ips = allreduce(window_images) / secs;
      char line[512];
      std::snprintf(line, sizeof line,
                    "step %ld/%ld | epoch %.2f | loss %.4f | lr %.3g | grad norm %.3f | %.0f ms/step | %.0f tok/s | %.1f img/s | ETA %s%s",
                    static_cast<long>(step), static_cast<long>(total_steps), static_cast<double>(step) / steps_per_epoch,
                    window_loss / window_steps, lr_now, window_gn / window_steps, ms, tps, ips, format_duration(eta).c_str(),
                    val >= 0 ? cat(" | val loss ", val).c_str() : "");
      clear_bar();
      info(line);
      if (lead) {
        csv << step << "," << static_cast<double>(step) / steps_per_epoch << "," << window_loss / window_steps << "," << lr_now << ","
            << window_gn / window_steps << "," << ms << "," << tps << "," << ips << "," << (val >= 0 ? std::to_string(val) : "") << "\n";
        csv.flush();
        curve.push_back({static_cast<double>(step), window_loss / window_steps});
        if (val >= 0) val_curve.push_back({static_cast<double>(step), val});
        if (cfg_.plot) write_curve_png(cfg_.out_dir + "/loss.png", curve, val_curve, cat(m_.spec().method, " - loss"));
      }
      window_loss = window_tokens = window_images = window_gn = 0;
      window_steps = 0;
      window_sw.reset();
    }
    if ((cfg_.save_every > 0 && step % cfg_.save_every == 0) || last) {
      clear_bar();
      save_checkpoint(step, opt);
    }
    if (bar && !last) {
      const int width = 30, filled = static_cast<int>(width * step / total_steps);
      std::string b(static_cast<size_t>(filled), '=');
      if (filled < width) b += '>' + std::string(static_cast<size_t>(width - filled - 1), ' ');
      std::fprintf(stderr, "\r[%s] %ld/%ld %3.0f%% | loss %.4f | ETA %s\x1b[K", b.c_str(), static_cast<long>(step), static_cast<long>(total_steps),
                   100.0 * step / total_steps, step_loss, format_duration(eta).c_str());
      std::fflush(stderr);
    }
  }
  clear_bar();
  if (no_targets_ > 0)
    info(cat("warning: ", no_targets_, " encodings (training and validation) lost every answer token to max_seq_len ", cfg_.max_seq_len));
  if (scaler.skipped() > 0) info(cat("fp16: ", scaler.skipped(), " steps skipped for overflow; final loss scale ", scaler.scale()));
  if (lead) m_.save_adapter(cfg_.out_dir);  // the final adapter at the top of the output folder
  if (!val_.empty()) {
    res.val_loss_after = evaluate(val_, cfg_.eval_batches);
    info(cat("val loss after training: ", res.val_loss_after));
    if (lead && cfg_.plot) {
      val_curve.push_back({static_cast<double>(step), res.val_loss_after});
      write_curve_png(cfg_.out_dir + "/loss.png", curve, val_curve, cat(m_.spec().method, " - loss"));
    }
  }
  res.steps = step;
  res.seconds = total_sw.seconds();
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) == 0) res.peak_rss_mb = static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux: KiB
  if (auto* c = m_.feature_cache()) info(cat("feature cache: ", c->hits(), " hits, ", c->misses(), " misses"));
  m_.train_mode(false);
  return res;
}

}  // namespace vadapt::train
