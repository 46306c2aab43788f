// Trainer loop, optimizer groups, logging and checkpoints.
#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include "common/error.h"
#include "common/log.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/load.h"
#include "train/lr_schedule.h"

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
}

text::EncodedPrompt Trainer::encode(const data::Sample& s) const {
  auto segs = m_.chat_template().segments(s.conv, false);
  auto e = text::encode_segments(m_.tokenizer(), segs, m_.image_tokens());
  if (s.image.empty() && e.num_images > 0) throw VadaptError(cat("sample ", s.id, ": <image> in a text-only sample"));
  if (!s.image.empty() && e.num_images != 1)
    throw VadaptError(cat("sample ", s.id, ": expected exactly one <image> in the prompt, found ", e.num_images));
  if (static_cast<int64_t>(e.ids.size()) > cfg_.max_seq_len) {
    // Truncate from the end; never cut through the image tokens.
    int64_t last_img = -1;
    for (size_t i = 0; i < e.ids.size(); ++i)
      if (e.ids[i] == text::kImageToken) last_img = static_cast<int64_t>(i);
    if (last_img >= cfg_.max_seq_len)
      throw VadaptError(cat("sample ", s.id, ": image tokens end at position ", last_img + 1, ", beyond max_seq_len ", cfg_.max_seq_len));
    e.ids.resize(static_cast<size_t>(cfg_.max_seq_len));
    e.labels.resize(static_cast<size_t>(cfg_.max_seq_len));
  }
  return e;
}

vlm::Batch Trainer::make_batch(const std::vector<data::Sample>& data, const std::vector<size_t>& idx) const {
  std::vector<text::EncodedPrompt> prompts;
  std::vector<std::string> images;
  for (size_t i : idx) {
    prompts.push_back(encode(data[i]));
    images.push_back(data[i].image);
  }
  return m_.collate(prompts, images);
}

std::vector<size_t> Trainer::epoch_order(int64_t epoch) const {
  std::vector<size_t> order(train_.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(cfg_.seed * 1000003ull + static_cast<uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

double Trainer::evaluate(const std::vector<data::Sample>& data, int64_t max_batches) {
  torch::NoGradGuard ng;
  m_.train_mode(false);
  double sum = 0;
  int64_t count = 0;
  const size_t bs = static_cast<size_t>(cfg_.batch_size);
  int64_t batches = 0;
  for (size_t i = 0; i < data.size() && (max_batches < 0 || batches < max_batches); i += bs, ++batches) {
    std::vector<size_t> idx;
    for (size_t j = i; j < std::min(data.size(), i + bs); ++j) idx.push_back(j);
    auto r = m_.loss(make_batch(data, idx));
    sum += r.loss_sum;
    count += r.target_tokens;
  }
  return count ? sum / static_cast<double>(count) : 0.0;
}

void Trainer::save_checkpoint(int64_t step, torch::optim::Optimizer& opt) const {
  const std::string final_dir = cfg_.out_dir + "/checkpoint-" + std::to_string(step);
  const std::string tmp = cfg_.out_dir + "/.tmp-checkpoint-" + std::to_string(step);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  m_.save_adapter(tmp);
  torch::save(opt, tmp + "/optimizer.pt");
  auto gen = at::detail::getDefaultCPUGenerator();
  auto rng = gen.get_state();
  io::write_safetensors(tmp + "/rng_state.safetensors", {{"torch_cpu", rng}});
  nlohmann::json st = {{"step", step}, {"seed", cfg_.seed}, {"batch_size", cfg_.batch_size}, {"grad_accum", cfg_.grad_accum},
                       {"train_samples", train_.size()}};
  io::write_text_atomic(tmp + "/trainer_state.json", st.dump(2));  // written last: marks the folder complete
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  auto all = list_checkpoints(cfg_.out_dir);
  for (size_t i = 0; cfg_.keep_last > 0 && all.size() > static_cast<size_t>(cfg_.keep_last) && i < all.size() - cfg_.keep_last; ++i)
    fs::remove_all(all[i]);
  log_info(cat("saved ", final_dir));
}

int64_t Trainer::load_checkpoint(const std::string& dir, torch::optim::Optimizer& opt) {
  auto st = io::read_json(dir + "/trainer_state.json");
  int64_t step = io::json_get<int64_t>(st, "step", dir + "/trainer_state.json");
  if (io::json_get<int64_t>(st, "batch_size", dir) != cfg_.batch_size || io::json_get<int64_t>(st, "grad_accum", dir) != cfg_.grad_accum ||
      io::json_get<uint64_t>(st, "seed", dir) != cfg_.seed)
    raise(dir + "/trainer_state.json", "batch_size", "resume needs the same batch_size, grad_accum and seed as the run that wrote it");
  m_.load_adapter_weights(dir);
  torch::load(opt, dir + "/optimizer.pt");
  auto rng = io::SafeTensorsFile::open(dir + "/rng_state.safetensors")->tensor("torch_cpu").clone();
  auto gen = at::detail::getDefaultCPUGenerator();
  gen.set_state(rng);
  log_info(cat("resumed from ", dir, " at step ", step));
  return step;
}

TrainResult Trainer::fit() {
  Stopwatch total_sw;
  fs::create_directories(cfg_.out_dir);
  const int64_t global_batch = cfg_.batch_size * cfg_.grad_accum;
  const int64_t micro_per_epoch = (static_cast<int64_t>(train_.size()) + cfg_.batch_size - 1) / cfg_.batch_size;
  const int64_t steps_per_epoch = std::max<int64_t>(1, micro_per_epoch / cfg_.grad_accum);
  const int64_t total_steps = cfg_.max_steps > 0 ? cfg_.max_steps : steps_per_epoch * cfg_.epochs;
  const int64_t warmup = static_cast<int64_t>(std::floor(cfg_.warmup_ratio * static_cast<double>(total_steps)));
  const double base_lr = cfg_.blr > 0 ? cfg_.blr * static_cast<double>(global_batch) / 256.0 : cfg_.lr;

  // Optimizer groups: per trainable group, decay / no-decay (1-D tensors: biases, norms).
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> group_lr;
  std::vector<torch::Tensor> all_params;
  TrainResult res;
  for (auto& [name, params] : m_.trainable_groups()) {
    double lr = (name == "projector" && cfg_.lr_projector > 0) ? cfg_.lr_projector : base_lr;
    std::vector<torch::Tensor> decay, no_decay;
    for (auto& p : params) (p.dim() <= 1 ? no_decay : decay).push_back(p), all_params.push_back(p);
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
  res.total = res.trainable + model::count_parameters(*m_.lm()).total - (m_.spec().tune == "full" ? model::count_parameters(*m_.lm()).total : 0) +
              model::count_parameters(m_.tower().module()).total;
  log_info(cat("method ", m_.spec().method, " | tune ", m_.spec().tune, " | template ", m_.spec().template_name, " | connector ",
               m_.spec().connector));
  log_info(cat("parameters: total ", human_count(res.total), ", trainable ", human_count(res.trainable), " (",
               100.0 * res.trainable / std::max<int64_t>(1, res.total), "%)"));
  log_info(cat("data: ", train_.size(), " train / ", val_.size(), " val samples | batch ", cfg_.batch_size, " x accum ",
               cfg_.grad_accum, " | ", total_steps, " steps (", steps_per_epoch, "/epoch) | lr ", base_lr, " ", cfg_.schedule,
               ", warmup ", warmup));

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
  if (cfg_.resume.empty()) torch::manual_seed(cfg_.seed + 17);  // dropout stream; a resume restored it above
  if (m_.feature_cache()) log_info("vision features: cached (frozen tower runs once per image)");
  if (!val_.empty() && step == 0) {
    res.val_loss_before = evaluate(val_, cfg_.eval_batches);
    log_info(cat("val loss before training: ", res.val_loss_before));
  }
  std::ofstream csv(cfg_.out_dir + "/metrics.csv", step == 0 ? std::ios::trunc : std::ios::app);
  if (step == 0) csv << "step,epoch,loss,lr,grad_norm,ms_per_step,tokens_per_s,images_per_s,val_loss\n";

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
    double step_loss = 0;
    for (int64_t a = 0; a < cfg_.grad_accum; ++a) {
      const int64_t micro = ((step % steps_per_epoch) * cfg_.grad_accum + a) % micro_per_epoch;
      std::vector<size_t> idx;
      for (int64_t j = micro * cfg_.batch_size; j < std::min<int64_t>((micro + 1) * cfg_.batch_size, order.size()); ++j)
        idx.push_back(order[static_cast<size_t>(j)]);
      auto batch = make_batch(train_, idx);
      auto r = m_.loss(batch);
      (r.loss / static_cast<double>(cfg_.grad_accum)).backward();
      step_loss += r.loss.item<double>() / static_cast<double>(cfg_.grad_accum);
      window_tokens += static_cast<double>(batch.tokens);
      window_images += batch.pixels.defined()     ? static_cast<double>(batch.pixels.size(0))
                       : batch.features.defined() ? static_cast<double>(batch.features.size(0))
                                                  : 0.0;
    }
    double gn = cfg_.max_grad_norm > 0 ? torch::nn::utils::clip_grad_norm_(all_params, cfg_.max_grad_norm)
                                       : torch::nn::utils::clip_grad_norm_(all_params, 1e30);
    if (!std::isfinite(step_loss)) throw VadaptError(cat("train: loss is ", step_loss, " at step ", step, " (lower the lr?)"));
    opt.step();
    ++step;
    losses_.push_back(step_loss);
    res.last_loss = step_loss;
    window_loss += step_loss, window_gn += gn, ++window_steps;
    const bool last = step == total_steps;
    double val = -1;
    if (cfg_.eval_every > 0 && step % cfg_.eval_every == 0 && !val_.empty() && !last) val = evaluate(val_, cfg_.eval_batches);
    if (step % cfg_.log_every == 0 || last || val >= 0) {
      const double secs = window_sw.seconds();
      const double ms = 1000.0 * secs / window_steps;
      const double eta = run_sw.seconds() / static_cast<double>(step - start_step) * static_cast<double>(total_steps - step);
      char line[512];
      std::snprintf(line, sizeof line,
                    "step %ld/%ld | epoch %.2f | loss %.4f | lr %.3g | grad norm %.3f | %.0f ms/step | %.0f tok/s | %.1f img/s | ETA %.0fs%s",
                    static_cast<long>(step), static_cast<long>(total_steps), static_cast<double>(step) / steps_per_epoch,
                    window_loss / window_steps, *std::max_element(group_lr.begin(), group_lr.end()) * mult, window_gn / window_steps, ms, window_tokens / secs,
                    window_images / secs, eta, val >= 0 ? cat(" | val loss ", val).c_str() : "");
      log_info(line);
      csv << step << "," << static_cast<double>(step) / steps_per_epoch << "," << window_loss / window_steps << ","
          << *std::max_element(group_lr.begin(), group_lr.end()) * mult << "," << window_gn / window_steps << "," << ms << "," << window_tokens / secs << ","
          << window_images / secs << "," << (val >= 0 ? std::to_string(val) : "") << "\n";
      csv.flush();
      window_loss = window_tokens = window_images = window_gn = 0;
      window_steps = 0;
      window_sw.reset();
      (void)epoch;
    }
    if ((cfg_.save_every > 0 && step % cfg_.save_every == 0) || last) save_checkpoint(step, opt);
  }
  m_.save_adapter(cfg_.out_dir);  // the final adapter at the top of the output folder
  if (!val_.empty()) {
    res.val_loss_after = evaluate(val_, cfg_.eval_batches);
    log_info(cat("val loss after training: ", res.val_loss_after));
  }
  res.steps = step;
  res.seconds = total_sw.seconds();
  if (auto* c = m_.feature_cache()) log_info(cat("feature cache: ", c->hits(), " hits, ", c->misses(), " misses"));
  m_.train_mode(false);
  return res;
}

}  // namespace vadapt::train
