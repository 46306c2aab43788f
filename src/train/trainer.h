// The one Trainer for every method: AdamW over parameter groups (per-group lr, no weight decay
// on biases / norms / 1-D tensors), warmup + cosine / linear / half-cosine schedules, gradient
// accumulation and clipping, seeded data order, one log line per log step (stderr), a CSV of
// the curve, atomic checkpoints holding only what trains plus the trainer state for an exact
// resume, keep-last-N.
#pragma once

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "train/distributed.h"
#include "vlm/vision_language_model.h"

namespace vadapt::train {

struct TrainConfig {
  int64_t epochs = 1;
  int64_t max_steps = -1;   // optimizer steps; -1: epochs decide
  int64_t batch_size = 8;   // per micro-batch
  int64_t grad_accum = 1;
  double lr = 2e-3;
  double blr = -1;          // > 0: lr = blr * global_batch / 256
  double lr_projector = -1; // < 0: lr
  // Per parameter group lr by the method's group names (LLaMA-Adapter V2: visual, prompts,
  // bias_scale, norms, lora); groups not named take lr (or lr_projector).
  std::map<std::string, double> lr_groups;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  double warmup_ratio = 0.03;
  double warmup_epochs = -1;   // >= 0: warmup over this many epochs instead (MAE-style recipes: LLaMA-Adapter, LaVIN)
  std::string schedule = "cosine";
  // LLaVA's group_by_modality_length: every micro-batch (over all ranks) holds only image or
  // only text samples, longest first within it; the two leftovers form one last mixed batch.
  bool group_by_modality_length = false;
  int64_t max_seq_len = 512;
  // Samples longer than max_seq_len (found by the pre-scan before the first step, reported with
  // file and record): "truncate" keeps their first max_seq_len tokens (LLaVA's tokenizer
  // truncation), "skip" drops them, "error" stops before training.
  std::string long_samples = "truncate";
  // data.skip_bad: samples the pre-scan finds untrainable (a prompt the template refuses, an
  // image count the method cannot take, image tokens or the whole answer beyond max_seq_len) are
  // dropped and counted instead of stopping the run before it starts.
  bool skip_bad = false;
  uint64_t seed = 0;
  int64_t log_every = 10;
  int64_t save_every = 0;   // optimizer steps; 0: only at the end
  int64_t keep_last = 2;
  int64_t eval_every = 0;
  int64_t eval_batches = -1;  // -1: the whole validation set
  std::string out_dir;
  std::string resume;       // checkpoint folder or "latest"
  std::string precision = "fp32";  // fp32 | bf16 | fp16: autocast compute; trainable weights stay fp32
  bool plot = false;        // loss.png beside metrics.csv, redrawn at every log step
  bool progress = true;     // a progress bar between log lines when stderr is a terminal
  // Data parallel: each optimizer step takes batch_size x grad_accum samples per rank; gradients
  // are summed over ranks and normalised by the step's target tokens over all ranks.
  std::shared_ptr<Communicator> comm;
};

// LLaVA's get_modality_length_grouped_indices over an already shuffled order: megabatches
// (batch x ranks) of only image or only text samples, longest first within each, in shuffled
// order; the last, partial megabatch of each modality is joined into one final batch.
std::vector<size_t> group_by_modality(const std::vector<data::Sample>& data, const std::vector<size_t>& shuffled, size_t megabatch,
                                      std::mt19937_64& rng);

struct TrainResult {
  int64_t steps = 0;
  double last_loss = 0;
  double val_loss_before = -1, val_loss_after = -1;
  double seconds = 0;
  int64_t trainable = 0, total = 0;
  double peak_rss_mb = 0;  // the process's peak resident memory so far (getrusage), CPU side
};

class Trainer {
 public:
  Trainer(vlm::VisionLanguageModel& model, std::vector<data::Sample> train, std::vector<data::Sample> val, TrainConfig cfg);
  TrainResult fit();
  // Mean loss per target token over `data` (teacher forcing, no grad).
  double evaluate(const std::vector<data::Sample>& data, int64_t max_batches = -1);
  // Loss of each optimizer step so far (for tests and plots).
  const std::vector<double>& losses() const { return losses_; }

 private:
  // The whole prompt with its labels; throws for a sample that cannot be encoded as one input.
  text::EncodedPrompt encode_full(const data::Sample& s) const;
  // encode_full, then cut to max_seq_len.
  text::EncodedPrompt encode(const data::Sample& s) const;
  // Encodes every sample of `set` once before training, drops or refuses what cannot be trained
  // and applies long_samples; `what` names the set in the report.
  void prescan(std::vector<data::Sample>& set, const std::string& what);
  vlm::Batch make_batch(const std::vector<data::Sample>& data, const std::vector<size_t>& idx) const;
  std::vector<size_t> epoch_order(int64_t epoch) const;
  int rank() const { return cfg_.comm ? cfg_.comm->rank() : 0; }
  int world() const { return cfg_.comm ? cfg_.comm->world_size() : 1; }
  double allreduce(double v) const;
  void save_checkpoint(int64_t step, torch::optim::Optimizer& opt) const;
  int64_t load_checkpoint(const std::string& dir, torch::optim::Optimizer& opt);

  vlm::VisionLanguageModel& m_;
  std::vector<data::Sample> train_, val_;
  TrainConfig cfg_;
  std::vector<double> losses_;
  mutable int64_t no_targets_ = 0;  // encodings whose answer was cut away by max_seq_len
};

// The checkpoint-<step> folders under `out_dir`, oldest first.
std::vector<std::string> list_checkpoints(const std::string& out_dir);

}  // namespace vadapt::train
