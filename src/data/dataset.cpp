// Dataset readers with record-level errors.
#include "data/dataset.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "io/json_file.h"

namespace vadapt::data {
namespace fs = std::filesystem;
namespace {

struct BadRecord : VadaptError {
  using VadaptError::VadaptError;
};

[[noreturn]] void bad(const std::string& file, int64_t index, const std::string& field, const std::string& what) {
  throw BadRecord(file, cat("record ", index, field.empty() ? "" : " field '" + field + "'"), what);
}

// Runs one record's parser; with skip_bad a malformed record is counted and skipped.
template <typename F>
void guarded(const LoadOptions& o, LoadReport& rep, F&& parse_record) {
  try {
    parse_record();
  } catch (const BadRecord& e) {
    if (!o.skip_bad) throw;
    ++rep.skipped;
    log_warn(std::string("skipping: ") + e.what());
  }
}

std::string resolve(const std::string& root, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(root) / p).string();
}

std::string strip(const std::string& t) {
  const char* ws = " \t\n\r\f\v";
  size_t a = t.find_first_not_of(ws);
  if (a == std::string::npos) return {};
  return t.substr(a, t.find_last_not_of(ws) - a + 1);
}

// LLaVA's preprocess_multimodal: the tag leaves the text and comes back at the front, then "\n".
std::string image_first(const std::string& t) {
  std::string rest = t;
  for (size_t at; (at = rest.find(text::kImageTag)) != std::string::npos;) rest.erase(at, std::string(text::kImageTag).size());
  return strip(std::string(text::kImageTag) + "\n" + strip(rest));
}

std::string replace_all(std::string t, const std::string& from, const std::string& to) {
  for (size_t at = 0; (at = t.find(from, at)) != std::string::npos; at += to.size()) t.replace(at, from.size(), to);
  return t;
}

// base_prompt.py: text.replace("  ", " ").strip() (one pass, as Python's replace).
std::string single_spaced(const std::string& t) { return strip(replace_all(t, "  ", " ")); }

// "image": a path, or a list of paths (a multi-image sample / the frames of a video): the first
// is the sample's image, the rest its frames.
void read_images(const nlohmann::json& v, const std::string& file, int64_t index, const std::string& root, Sample& s) {
  if (v.is_string()) {
    s.image = resolve(root, v.get<std::string>());
    return;
  }
  if (!v.is_array()) bad(file, index, "image", "must be a path or a list of paths");
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string() || v[i].get<std::string>().empty()) bad(file, index, "image[" + std::to_string(i) + "]", "must be a non-empty path");
    (i == 0 ? s.image : s.frames.emplace_back()) = resolve(root, v[i].get<std::string>());
  }
}

Sample parse_llava(const nlohmann::json& r, const std::string& file, int64_t index, const std::string& root,
                   const std::string& placement) {
  if (!r.is_object()) bad(file, index, "", "must be an object");
  Sample s;
  auto id = r.find("id");
  if (id != r.end()) s.id = id->is_string() ? id->get<std::string>() : id->dump();
  else s.id = std::to_string(index);
  auto img = r.find("image");
  if (img != r.end() && !img->is_null()) read_images(*img, file, index, root, s);
  auto type = r.find("type");
  if (type != r.end() && type->is_string()) s.type = type->get<std::string>();
  auto conv = r.find("conversations");
  if (conv == r.end() || !conv->is_array() || conv->empty()) bad(file, index, "conversations", "missing or empty list");
  size_t skip = 0;  // LLaVA skips a leading assistant turn (preprocess_v1 and the others)
  if ((*conv)[0].is_object() && (*conv)[0].contains("from") && (*conv)[0]["from"].is_string()) {
    const auto from = (*conv)[0]["from"].get<std::string>();
    if (from == "gpt" || from == "assistant") skip = 1;
  }
  if (skip >= conv->size()) bad(file, index, "conversations", "holds only an assistant turn");
  for (size_t i = skip; i < conv->size(); ++i) {
    const auto& t = (*conv)[i];
    std::string f = "conversations[" + std::to_string(i) + "]";
    if (!t.is_object() || !t.contains("from") || !t["from"].is_string()) bad(file, index, f + ".from", "missing string");
    if (!t.contains("value") || !t["value"].is_string()) bad(file, index, f + ".value", "missing string");
    std::string from = t["from"].get<std::string>();
    std::string role = (from == "human" || from == "user") ? "user" : (from == "gpt" || from == "assistant") ? "assistant" : "";
    if (role.empty()) bad(file, index, f + ".from", "expected human/user or gpt/assistant, got '" + from + "'");
    const char* want = (i - skip) % 2 == 0 ? "user" : "assistant";
    if (role != want) bad(file, index, f + ".from", std::string("turns must alternate starting with the user; expected ") + want);
    s.conv.turns.push_back({role, t["value"].get<std::string>()});
  }
  const std::string& first = s.conv.turns[0].text;
  bool has_tag = false;
  for (const auto& t : s.conv.turns) has_tag = has_tag || t.text.find(text::kImageTag) != std::string::npos;
  if (!s.image.empty() && !has_tag) s.conv.turns[0].text = std::string(text::kImageTag) + "\n" + first;
  if (placement == "front")
    for (auto& t : s.conv.turns)
      if (t.text.find(text::kImageTag) != std::string::npos) t.text = image_first(t.text);
  if (s.image.empty() && has_tag) bad(file, index, "image", "conversation has <image> but the record has no image");
  return s;
}

constexpr const char* kAlpacaInputSystem =
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that "
    "appropriately completes the request.";

// Alpaca: {instruction, input?, output} (+ optional id, type, image). With an input, the system
// line is Alpaca's "paired with an input" form and the user turn carries "### Input:".
Sample parse_alpaca(const nlohmann::json& r, const std::string& file, int64_t index, const std::string& root) {
  if (!r.is_object()) bad(file, index, "", "must be an object");
  auto str = [&](const char* key, bool required) {
    auto it = r.find(key);
    if (it == r.end() || it->is_null()) {
      if (required) bad(file, index, key, "missing string");
      return std::string();
    }
    if (!it->is_string()) bad(file, index, key, "must be a string");
    return it->get<std::string>();
  };
  Sample s;
  auto id = r.find("id");
  s.id = id != r.end() ? (id->is_string() ? id->get<std::string>() : id->dump()) : std::to_string(index);
  s.type = str("type", false);
  s.image = resolve(root, str("image", false));
  std::string user = str("instruction", true), input = str("input", false), output = str("output", true);
  if (!input.empty()) {
    user += "\n\n### Input:\n" + input;
    s.conv.system = kAlpacaInputSystem;
  }
  if (!s.image.empty() && user.find(text::kImageTag) == std::string::npos) user = std::string(text::kImageTag) + "\n" + user;
  s.conv.turns = {{"user", user}, {"assistant", output}};
  return s;
}

bool looks_like_alpaca(const nlohmann::json& j) {
  return j.is_array() && !j.empty() && j[0].is_object() && j[0].contains("instruction") && !j[0].contains("conversations");
}

std::vector<Sample> load_llava(const std::string& path, const LoadOptions& o, LoadReport& rep, bool alpaca) {
  auto j = io::read_json(path);
  if (!j.is_array()) raise(path, "", alpaca ? "expected a JSON list of Alpaca records" : "expected a JSON list of records (LLaVA conversation format)");
  alpaca = alpaca || looks_like_alpaca(j);
  std::vector<Sample> out;
  for (size_t i = 0; i < j.size(); ++i)
    guarded(o, rep, [&] {
      const auto idx = static_cast<int64_t>(i);
      out.push_back(alpaca ? parse_alpaca(j[i], path, idx, o.image_root) : parse_llava(j[i], path, idx, o.image_root, o.image_placement));
      out.back().origin = cat(path, " record ", i);
    });
  return out;
}

std::vector<Sample> load_coco(const std::string& path, const LoadOptions& o, LoadReport& rep) {
  auto j = io::read_json(path);
  if (!j.is_object() || !j.contains("images") || !j.contains("annotations"))
    raise(path, "", "expected a COCO captions file with 'images' and 'annotations'");
  std::map<int64_t, std::string> files;
  if (!j["images"].is_array() || !j["annotations"].is_array()) raise(path, "", "'images' and 'annotations' must be lists");
  for (size_t i = 0; i < j["images"].size(); ++i) {
    const auto& im = j["images"][i];
    if (!im.is_object() || !im.contains("id") || !im["id"].is_number_integer() || !im.contains("file_name") || !im["file_name"].is_string())
      raise(path, cat("images[", i, "]"), "needs an integer id and a file_name string");
    files[im["id"].get<int64_t>()] = im["file_name"].get<std::string>();
  }
  std::vector<Sample> out;
  const auto& anns = j["annotations"];
  for (size_t i = 0; i < anns.size(); ++i) {
    const auto& a = anns[i];
    guarded(o, rep, [&] {
      if (!a.contains("image_id") || !a["image_id"].is_number_integer()) bad(path, static_cast<int64_t>(i), "image_id", "missing integer");
      if (!a.contains("caption") || !a["caption"].is_string()) bad(path, static_cast<int64_t>(i), "caption", "missing string");
      auto f = files.find(a["image_id"].get<int64_t>());
      if (f == files.end()) bad(path, static_cast<int64_t>(i), "image_id", "no image with this id in 'images'");
      Sample s;
      s.id = a.contains("id") ? a["id"].dump() : std::to_string(i);
      s.image = resolve(o.image_root, f->second);
      s.conv.turns = {{"user", text::kImageTag}, {"assistant", a["caption"].get<std::string>()}};
      s.origin = cat(path, " annotations[", i, "]");
      out.push_back(std::move(s));
    });
  }
  return out;
}

std::vector<Sample> load_jsonl(const std::string& path, const LoadOptions& o, LoadReport& rep) {
  std::ifstream in(path);
  if (!in) raise(path, "", "cannot open");
  std::vector<Sample> out;
  std::string line;
  int64_t index = -1;
  while (std::getline(in, line)) {
    ++index;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    guarded(o, rep, [&] {
      nlohmann::json r;
      try {
        r = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        bad(path, index, "", std::string("invalid JSON: ") + e.what());
      }
      if (!r.is_object() || !r.contains("text") || !r["text"].is_string()) bad(path, index, "text", "missing string");
      Sample s;
      s.id = std::to_string(index);
      if (r.contains("image") && !r["image"].is_null()) read_images(r["image"], path, index, o.image_root, s);
      std::string prompt = r.contains("prompt") && r["prompt"].is_string() ? r["prompt"].get<std::string>() : "";
      s.conv.turns = {{"user", s.image.empty() ? prompt : std::string(text::kImageTag) + (prompt.empty() ? "" : "\n" + prompt)},
                      {"assistant", r["text"].get<std::string>()}};
      s.origin = cat(path, " line ", index + 1);
      out.push_back(std::move(s));
    });
  }
  return out;
}

// ScienceQA's problems.json -> LLaVA's CQM-A prompt: "Context: {hint}\n" (when there is one),
// the question, then "A. choice" lines; the answer is the letter.
std::vector<Sample> load_scienceqa(const std::string& path, const LoadOptions& o, LoadReport& rep) {
  auto problems = io::read_json(path);
  if (!problems.is_object()) raise(path, "", "expected ScienceQA problems.json: an object keyed by problem id");
  const std::string splits_path = (fs::path(path).parent_path() / "pid_splits.json").string();
  std::vector<std::string> pids;
  if (fs::exists(splits_path)) {
    auto splits = io::read_json(splits_path);
    if (!splits.contains(o.pid_split) || !splits[o.pid_split].is_array())
      raise(splits_path, o.pid_split, "no such split (train, val, test, minitrain, minival, minitest, ...)");
    for (const auto& id : splits[o.pid_split]) {
      const std::string pid = id.is_string() ? id.get<std::string>() : id.dump();
      if (problems.contains(pid)) pids.push_back(pid);
    }
  } else {
    log_warn(cat(splits_path, " not found: using every problem in ", path));
    for (const auto& [k, v] : problems.items()) pids.push_back(k);
  }
  const std::string root = o.image_root.empty() ? fs::path(path).parent_path().string() : o.image_root;
  std::vector<Sample> out;
  for (const auto& pid : pids) {
    const auto& p = problems[pid];
    guarded(o, rep, [&] {
      const std::string rec = "problem " + pid;
      auto need_string = [&](const char* key) {
        if (!p.contains(key) || !p[key].is_string()) throw BadRecord(path, rec + " field '" + key + "'", "missing string");
        return p[key].get<std::string>();
      };
      if (!p.is_object()) throw BadRecord(path, rec, "must be an object");
      const std::string question = need_string("question");
      if (!p.contains("choices") || !p["choices"].is_array() || p["choices"].empty() || p["choices"].size() > 26 ||
          !std::all_of(p["choices"].begin(), p["choices"].end(), [](const nlohmann::json& c) { return c.is_string(); }))
        throw BadRecord(path, rec + " field 'choices'", "expected a list of 1-26 strings");
      if (!p.contains("answer") || !p["answer"].is_number_integer() || p["answer"].get<int64_t>() < 0 ||
          p["answer"].get<size_t>() >= p["choices"].size())
        throw BadRecord(path, rec + " field 'answer'", "expected an index into 'choices'");
      const std::string hint = p.contains("hint") && p["hint"].is_string() ? p["hint"].get<std::string>() : "";
      const auto& choices = p["choices"];
      const char answer = static_cast<char>('A' + p["answer"].get<int>());
      auto opt_text = [&](const std::string& field) {
        return p.contains(field) && p[field].is_string() ? p[field].get<std::string>() : std::string();
      };
      std::string text, target;
      if (o.scienceqa_format == "CQM-A") {  // LLaVA's evaluation file (llava_test_CQM-A.json)
        text = hint.empty() ? "" : "Context: " + hint + "\n";
        text += question;
        for (size_t c = 0; c < choices.size(); ++c) text += cat("\n", static_cast<char>('A' + c), ". ", choices[c].get<std::string>());
        target = std::string(1, answer);
      } else {  // ScienceQA's base_prompt.py, as LLaVA (QCM-LEA) and LaVIN (QCM-ALE) train on it
        std::string opts;
        for (size_t c = 0; c < choices.size(); ++c)
          opts += cat(c ? " " : "", "(", static_cast<char>('A' + c), ") ", choices[c].get<std::string>());
        text = single_spaced("Question: " + question + "\nContext: " + (strip(hint).empty() ? "N/A" : strip(hint)) + "\nOptions: " + opts + "\n");
        const std::string lecture = opt_text("lecture"), solution = opt_text("solution");
        if (o.scienceqa_format == "QCM-LEA") {
          text = replace_all(text, "Question: ", "");  // convert_sqa_to_llava.py drops the prefixes
          target = replace_all(single_spaced(cat("Answer: ", lecture, " ", solution, " The answer is ", answer, ".")), "Answer: ", "");
        } else {
          target = single_spaced(cat("The answer is ", answer, ". BECAUSE: ", lecture, " ", solution));
          if (target.size() >= 8 && target.compare(target.size() - 8, 8, "BECAUSE:") == 0) target = strip(target.substr(0, target.size() - 8));
        }
      }
      Sample s;
      s.id = pid;
      if (p.contains("image") && p["image"].is_string()) {
        const std::string img = p["image"].get<std::string>();
        s.image = (fs::path(root) / "images" / "test" / pid / img).string();
        for (const char* split : {"train", "val", "test"}) {
          auto cand = fs::path(root) / "images" / split / pid / img;
          if (fs::exists(cand)) s.image = cand.string();
        }
        text = o.scienceqa_format == "QCM-LEA" && o.image_placement == "as_written" ? text + "\n" + text::kImageTag
                                                                                   : std::string(text::kImageTag) + "\n" + text;
      }
      s.conv.turns = {{"user", text}, {"assistant", target}};
      s.type = p.value("subject", "");
      s.origin = cat(path, " problem ", pid);
      s.tags = {{"subject", p.value("subject", "")},
                {"grade", p.value("grade", "")},
                {"has_context", hint.empty() ? "0" : "1"},
                {"choices", std::to_string(p["choices"].size())}};
      out.push_back(std::move(s));
    });
  }
  return out;
}

}  // namespace

std::vector<Sample> load_dataset(const std::string& path, const LoadOptions& opts_in, LoadReport* report) {
  LoadOptions o = opts_in;
  if (!fs::exists(path)) raise(path, "", "dataset file does not exist");
  if (o.image_placement != "front" && o.image_placement != "as_written")
    raise(path, "image_placement", "expected 'front' or 'as_written', got '", o.image_placement, "'");
  if (o.scienceqa_format != "CQM-A" && o.scienceqa_format != "QCM-LEA" && o.scienceqa_format != "QCM-ALE")
    raise(path, "scienceqa_format", "expected CQM-A, QCM-LEA or QCM-ALE, got '", o.scienceqa_format, "'");
  if (o.image_root.empty()) o.image_root = fs::path(path).parent_path().string();
  std::string fmt = o.format;
  if (fmt.empty()) {
    std::string ext = fs::path(path).extension().string();
    if (ext == ".jsonl") fmt = "jsonl";
    else if (fs::path(path).filename().string().rfind("captions_", 0) == 0) fmt = "coco";
    else if (fs::path(path).filename() == "problems.json") fmt = "scienceqa";
    else fmt = "llava";
  }
  LoadReport rep;
  std::vector<Sample> out;
  if (fmt == "llava" || fmt == "alpaca") out = load_llava(path, o, rep, fmt == "alpaca");
  else if (fmt == "coco") out = load_coco(path, o, rep);
  else if (fmt == "jsonl") out = load_jsonl(path, o, rep);
  else if (fmt == "scienceqa") out = load_scienceqa(path, o, rep);
  else raise(path, "format", "unknown dataset format '", fmt, "' (llava, alpaca, coco, jsonl, scienceqa)");
  if (o.check_images) {
    std::vector<std::string> missing;
    std::vector<Sample> kept;
    for (auto& s : out) {
      bool gone = false;
      if (!s.image.empty() && !fs::exists(s.image)) missing.push_back(s.image), gone = true;
      for (const auto& p : s.frames)
        if (!fs::exists(p)) missing.push_back(p), gone = true;
      if (gone && o.skip_bad) { ++rep.skipped; continue; }
      kept.push_back(std::move(s));
    }
    if (!missing.empty() && !o.skip_bad) {
      std::string list;
      for (size_t i = 0; i < missing.size() && i < 5; ++i) list += "\n  " + missing[i];
      raise(path, "image", missing.size(), " image file(s) not found (use --skip-bad to skip them):", list,
            missing.size() > 5 ? "\n  ..." : "");
    }
    if (!missing.empty()) log_warn(cat("skipped ", missing.size(), " samples with missing images"));
    out = std::move(kept);
  }
  if (o.split_every > 0 && !o.split.empty()) {
    if (o.split != "train" && o.split != "val") raise(path, "split", "expected train or val, got '", o.split, "'");
    std::vector<std::string> images;
    for (const auto& s : out) if (!s.image.empty()) images.push_back(s.image);
    std::sort(images.begin(), images.end());
    images.erase(std::unique(images.begin(), images.end()), images.end());
    std::vector<Sample> kept;
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t rank = out[i].image.empty() ? static_cast<int64_t>(i)
                                          : std::lower_bound(images.begin(), images.end(), out[i].image) - images.begin();
      bool is_val = rank % o.split_every == 0;
      if (is_val == (o.split == "val")) kept.push_back(std::move(out[i]));
    }
    out = std::move(kept);
  }
  if (o.limit >= 0 && static_cast<int64_t>(out.size()) > o.limit) out.resize(static_cast<size_t>(o.limit));
  rep.loaded = static_cast<int64_t>(out.size());
  if (out.empty()) raise(path, "", "no usable samples");
  if (report) *report = rep;
  return out;
}

}  // namespace vadapt::data
