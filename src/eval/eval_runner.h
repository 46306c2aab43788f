// `vadapt eval`: batched greedy generation over a dataset with a vision-language model, scored
// per task, with per-sample predictions (JSONL) and a summary (JSON + a table for stderr).
// Tasks:
//  exact_match  short answers (LLaVA conversation JSON); accuracy overall and per "type"
//  vqa          VQA accuracy against the record's "answers" list (else its one answer)
//  scienceqa    multiple choice: LLaVA's llava_test_CQM-A.json or problems.json (+ pid_splits);
//               per subject / context modality / grade with problems.json (--problems or format)
//  captions     COCO captions (one generation per image): BLEU-1..4 and CIDEr-D
//  loss         teacher-forced loss and perplexity on the assistant turns
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "vlm/vision_language_model.h"

namespace vadapt::experts {
class Expert;
}

namespace vadapt::eval {

struct EvalOptions {
  std::string task;
  std::string data, format, image_root;
  std::string problems;       // ScienceQA problems.json for the per-category breakdown
  std::string split;          // ScienceQA pid split with format scienceqa (default: test)
  std::string prompt;         // captions: the user instruction (default "Describe the image briefly.")
  std::string prompt_suffix;  // appended to each question; scienceqa default: LLaVA's letter instruction
  int64_t limit = -1;
  int64_t batch_size = 8;
  int64_t max_new_tokens = -1;  // -1: the task's default
  std::string out_dir;          // predictions.jsonl + summary.json when set
  bool skip_bad = false;
  experts::Expert* expert = nullptr;  // text context before each image question (not owned)
};

struct EvalReport {
  nlohmann::json summary;  // task, n, metrics
  std::string table;       // markdown table of the metrics
};

EvalReport run_eval(vlm::VisionLanguageModel& m, const EvalOptions& opts);

std::vector<std::string> eval_task_names();

}  // namespace vadapt::eval
