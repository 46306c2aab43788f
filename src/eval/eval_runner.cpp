// Evaluation runner; see eval_runner.h.
#include "eval/eval_runner.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/error.h"
#include "common/log.h"
#include "data/dataset.h"
#include "eval/answer_scoring.h"
#include "eval/caption_metrics.h"
#include "experts/expert.h"
#include "generate/generator.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "train/trainer.h"
#include "vlm/pipeline.h"

namespace vadapt::eval {
namespace fs = std::filesystem;
namespace {

constexpr const char* kScienceQASuffix = "\nAnswer with the option's letter from the given choices directly.";

struct Query {
  std::string id, image, question;
  std::vector<std::string> references;
  const data::Sample* sample = nullptr;
};

std::string first_turn(const data::Sample& s, const std::string& role) {
  for (const auto& t : s.conv.turns)
    if (t.role == role) return t.text;
  return "";
}

// Greedy answers for every query, `batch` prompts at a time (left-padded). A prompt that does
// not fit the model's context with max_new_tokens gets no generation: its answer is empty (so it
// scores as wrong) and it is counted in *too_long.
std::vector<std::string> answer_all(vlm::VisionLanguageModel& m, const std::vector<Query>& qs, int64_t batch,
                                    int64_t max_new_tokens, int64_t* too_long, experts::Expert* expert) {
  torch::NoGradGuard ng;
  m.train_mode(false);
  generate::GenerateOptions go;
  go.max_new_tokens = max_new_tokens;
  go.sampling.temperature = 0;
  if (m.tokenizer().eos_id() >= 0) go.stop_ids.push_back(m.tokenizer().eos_id());
  std::vector<std::string> out;
  Stopwatch sw;
  int64_t generated = 0;
  const int64_t context = m.lm()->config().max_position_embeddings;
  for (size_t i = 0; i < qs.size(); i += static_cast<size_t>(batch)) {
    const size_t end = std::min(qs.size(), i + static_cast<size_t>(batch));
    std::vector<text::EncodedPrompt> prompts;
    std::vector<std::string> images;
    std::vector<size_t> rows;  // queries of this batch that fit
    for (size_t j = i; j < end; ++j) {
      vlm::Query q{qs[j].id, {}, qs[j].image};
      if (qs[j].sample) q.conv.system = qs[j].sample->conv.system;  // e.g. Alpaca's "paired with an input" line
      q.conv.turns.push_back({"user", experts::with_context(expert, qs[j].image, qs[j].question, qs[j].id)});
      auto enc = vlm::encode_query(m, q);
      if (static_cast<int64_t>(enc.ids.size()) + max_new_tokens > context) {
        ++*too_long;
        continue;
      }
      rows.push_back(j);
      prompts.push_back(std::move(enc));
      images.push_back(qs[j].image);
    }
    out.resize(end);
    if (!prompts.empty()) {
      auto res = vlm::answer(m, prompts, images, go);
      for (size_t r = 0; r < rows.size(); ++r) out[rows[r]] = strip(m.tokenizer().decode(res.tokens[r]));
      generated += res.generated_tokens;
    }
    const double s = sw.seconds();
    const double done = static_cast<double>(end);
    log_info(cat("eval: ", end, "/", qs.size(), " | ", static_cast<int64_t>(generated / std::max(s, 1e-9)), " tok/s | ETA ",
                 static_cast<int64_t>(s / done * (static_cast<double>(qs.size()) - done)), "s"));
  }
  return out;
}

std::string fmt(double v, int prec = 2) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

// ScienceQA metadata by problem id, from problems.json.
std::map<std::string, nlohmann::json> read_problems(const std::string& path) {
  std::map<std::string, nlohmann::json> out;
  if (path.empty()) return out;
  auto j = io::read_json(path);
  if (!j.is_object()) raise(path, "", "expected ScienceQA problems.json (an object keyed by problem id)");
  for (const auto& [k, v] : j.items()) out[k] = v;
  return out;
}

int count_options(const std::string& question) {
  int n = 0;
  while (n < 26 && question.find(cat("\n", static_cast<char>('A' + n), ". ")) != std::string::npos) ++n;
  return n;
}

}  // namespace

std::vector<std::string> eval_task_names() { return {"exact_match", "vqa", "scienceqa", "captions", "loss"}; }

EvalReport run_eval(vlm::VisionLanguageModel& m, const EvalOptions& o) {
  const auto names = eval_task_names();
  if (std::find(names.begin(), names.end(), o.task) == names.end())
    throw VadaptError(cat("--task: unknown task '", o.task, "' (exact_match, vqa, scienceqa, captions, loss)"));
  if (o.batch_size <= 0) throw VadaptError("--batch-size must be positive");
  data::LoadOptions lo;
  lo.format = o.format;
  lo.image_root = o.image_root;
  lo.skip_bad = o.skip_bad;
  lo.limit = o.limit;
  if (!o.split.empty()) lo.pid_split = o.split;
  data::LoadReport lrep;
  auto samples = data::load_dataset(o.data, lo, &lrep);
  if (lrep.skipped) log_warn(cat(lrep.skipped, " bad records skipped"));
  EvalReport rep;
  rep.summary = {{"task", o.task}, {"data", o.data}};
  Stopwatch sw;

  if (o.task == "loss") {
    train::TrainConfig cfg;
    cfg.batch_size = o.batch_size;
    cfg.out_dir = o.out_dir.empty() ? "." : o.out_dir;
    train::Trainer t(m, samples, {}, cfg);
    const double loss = t.evaluate(samples);
    rep.summary["n"] = samples.size();
    rep.summary["metrics"] = {{"loss", loss}, {"perplexity", std::exp(loss)}};
    rep.table = "| metric | value |\n|---|---|\n| loss | " + fmt(loss, 4) + " |\n| perplexity | " + fmt(std::exp(loss), 3) + " |\n";
  } else {
    std::vector<Query> qs;
    if (o.task == "captions") {
      // One query per image; every caption of the image is a reference.
      std::map<std::string, size_t> by_image;
      for (const auto& s : samples) {
        if (s.image.empty()) continue;
        auto [it, fresh] = by_image.emplace(s.image, qs.size());
        if (fresh) {
          const std::string instr = o.prompt.empty() ? "Describe the image briefly." : o.prompt;
          qs.push_back({s.id, s.image, std::string(text::kImageTag) + "\n" + instr, {}, &s});
        }
        qs[it->second].references.push_back(first_turn(s, "assistant"));
      }
      if (qs.empty()) raise(o.data, "", "no images with captions to evaluate");
    } else {
      const std::string suffix = !o.prompt_suffix.empty() ? o.prompt_suffix : o.task == "scienceqa" ? kScienceQASuffix : "";
      for (const auto& s : samples) {
        Query q{s.id, s.image, first_turn(s, "user") + suffix, {first_turn(s, "assistant")}, &s};
        qs.push_back(std::move(q));
      }
    }
    const int64_t max_new = o.max_new_tokens > 0 ? o.max_new_tokens : o.task == "captions" ? 40 : o.task == "scienceqa" ? 8 : 12;
    int64_t too_long = 0;
    auto preds = answer_all(m, qs, o.batch_size, max_new, &too_long, o.expert);
    if (too_long > 0) {
      log_warn(cat(too_long, " of ", qs.size(), " prompts do not fit the model's context of ", m.lm()->config().max_position_embeddings,
                   " positions with ", max_new, " new tokens: no answer generated, scored as wrong"));
      rep.summary["too_long_for_context"] = too_long;
    }
    nlohmann::json rows = nlohmann::json::array();
    std::string table;
    if (o.task == "captions") {
      std::vector<CaptionExample> ex;
      for (size_t i = 0; i < qs.size(); ++i) ex.push_back({preds[i], qs[i].references});
      std::vector<double> per;
      const double cider = cider_d(ex, &per);
      auto bleu = corpus_bleu(ex);
      for (size_t i = 0; i < qs.size(); ++i)
        rows.push_back({{"id", qs[i].id}, {"image", qs[i].image}, {"prediction", preds[i]}, {"references", qs[i].references}, {"cider_d", per[i]}});
      rep.summary["metrics"] = {{"BLEU-1", bleu.bleu[0]}, {"BLEU-2", bleu.bleu[1]}, {"BLEU-3", bleu.bleu[2]}, {"BLEU-4", bleu.bleu[3]}, {"CIDEr-D", cider}};
      table = "| metric | value |\n|---|---|\n";
      for (int k = 0; k < 4; ++k) table += cat("| BLEU-", k + 1, " | ", fmt(bleu.bleu[k], 4), " |\n");
      table += "| CIDEr-D | " + fmt(cider, 4) + " |\n";
    } else if (o.task == "scienceqa") {
      auto problems = read_problems(o.problems);
      std::vector<ScienceQAItem> items;
      for (size_t i = 0; i < qs.size(); ++i) {
        const auto& s = *qs[i].sample;
        ScienceQAItem it;
        const std::string q = first_turn(s, "user");
        int n_choices = s.tags.count("choices") ? std::stoi(s.tags.at("choices")) : count_options(q);
        const std::string ans = first_turn(s, "assistant");
        it.answer = parse_choice(ans, std::max(n_choices, 1));
        if (it.answer < 0) raise(o.data, cat("sample ", s.id), "reference answer '", ans, "' is not an option letter");
        it.predicted = parse_choice(preds[i], n_choices);
        it.has_image = !s.image.empty();
        it.has_text_context = s.tags.count("has_context") ? s.tags.at("has_context") == "1" : q.find("Context: ") != std::string::npos;
        it.subject = s.tags.count("subject") ? s.tags.at("subject") : "";
        it.grade = s.tags.count("grade") ? s.tags.at("grade") : "";
        if (auto p = problems.find(s.id); p != problems.end()) {
          it.subject = p->second.value("subject", "");
          it.grade = p->second.value("grade", "");
          it.has_text_context = !p->second.value("hint", "").empty();
        }
        items.push_back(it);
        rows.push_back({{"id", s.id}, {"prediction", preds[i]}, {"parsed", it.predicted >= 0 ? std::string(1, static_cast<char>('A' + it.predicted)) : "FAILED"},
                        {"answer", std::string(1, static_cast<char>('A' + it.answer))}, {"correct", it.predicted == it.answer}});
      }
      auto scores = scienceqa_scores(items);
      rep.summary["metrics"] = scores;
      table = "| category | accuracy % |\n|---|---|\n";
      for (const char* c : {"NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "average"})
        if (scores.count(c)) table += cat("| ", c, " | ", fmt(scores[c]), " |\n");
      table += cat("| unparsed answers | ", static_cast<int64_t>(scores["unparsed"]), " |\n");
    } else {
      std::map<std::string, std::pair<double, double>> by_type;  // type -> (sum, count)
      for (size_t i = 0; i < qs.size(); ++i) {
        const auto& s = *qs[i].sample;
        double score = 0;
        if (o.task == "vqa") score = vqa_accuracy(preds[i], qs[i].references);
        else score = exact_match(preds[i], qs[i].references[0]) ? 1 : 0;
        for (const std::string& t : {std::string("all"), s.type.empty() ? std::string() : s.type}) {
          if (t.empty()) continue;
          by_type[t].first += score;
          by_type[t].second += 1;
        }
        rows.push_back({{"id", s.id}, {"type", s.type}, {"question", qs[i].question}, {"prediction", preds[i]},
                        {"reference", qs[i].references[0]}, {"score", score}});
      }
      nlohmann::json metrics;
      table = "| type | n | accuracy |\n|---|---|---|\n";
      for (const auto& [t, v] : by_type) {
        if (t == "all") continue;
        metrics[t] = {{"n", v.second}, {"accuracy", v.first / v.second}};
        table += cat("| ", t, " | ", static_cast<int64_t>(v.second), " | ", fmt(v.first / v.second, 3), " |\n");
      }
      const auto& all = by_type["all"];
      metrics["all"] = {{"n", all.second}, {"accuracy", all.first / all.second}};
      table += cat("| all | ", static_cast<int64_t>(all.second), " | ", fmt(all.first / all.second, 3), " |\n");
      rep.summary["metrics"] = metrics;
    }
    rep.summary["n"] = qs.size();
    rep.table = table;
    if (!o.out_dir.empty()) {
      fs::create_directories(o.out_dir);
      std::string jsonl;
      for (const auto& r : rows) jsonl += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";  // a model may emit partial UTF-8
      io::write_text_atomic(o.out_dir + "/predictions.jsonl", jsonl);
    }
  }
  rep.summary["seconds"] = sw.seconds();
  if (!o.out_dir.empty()) {
    fs::create_directories(o.out_dir);
    io::write_text_atomic(o.out_dir + "/summary.json", rep.summary.dump(2));
  }
  return rep;
}

}  // namespace vadapt::eval
