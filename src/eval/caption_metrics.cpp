// BLEU and CIDEr-D as coco-caption computes them; see caption_metrics.h.
#include "eval/caption_metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>

namespace vadapt::eval {
namespace {

using NGram = std::vector<std::string>;
using Counts = std::map<NGram, double>;

// Punctuation tokens coco-caption's tokenizer removes after PTB tokenisation.
const std::set<std::string> kDropped = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"};

Counts ngram_counts(const std::vector<std::string>& words, int n_max) {
  Counts c;
  for (int n = 1; n <= n_max; ++n)
    for (size_t i = 0; i + static_cast<size_t>(n) <= words.size(); ++i) c[NGram(words.begin() + i, words.begin() + i + n)] += 1;
  return c;
}

}  // namespace

std::vector<std::string> ptb_tokenize(const std::string& text) {
  // Lower-case, then split punctuation off words the way the PTB tokenizer does.
  std::string s;
  for (char ch : text) s += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  std::vector<std::string> raw;
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) raw.push_back(cur);
    cur.clear();
  };
  for (size_t i = 0; i < s.size(); ++i) {
    char ch = s[i];
    if (std::isspace(static_cast<unsigned char>(ch))) {
      flush();
    } else if (ch == '.' && i + 2 < s.size() && s[i + 1] == '.' && s[i + 2] == '.') {
      flush();
      raw.push_back("...");
      i += 2;
    } else if (std::string(",;:!?\"()[]{}").find(ch) != std::string::npos) {
      flush();
      raw.push_back(ch == '"' ? "''" : ch == '(' ? "-LRB-" : ch == ')' ? "-RRB-" : ch == '{' ? "-LCB-" : ch == '}' ? "-RCB-" : std::string(1, ch));
    } else if (ch == '.' && (i + 1 == s.size() || std::isspace(static_cast<unsigned char>(s[i + 1])) || s[i + 1] == '"')) {
      flush();  // a sentence-final period; inside tokens ("3.5", "u.s.") it stays
      raw.push_back(".");
    } else {
      cur += ch;
    }
  }
  flush();
  std::vector<std::string> out;
  for (auto& w : raw) {
    // Clitics: "dog's" -> "dog 's", "don't" -> "do n't", "they're" -> "they 're".
    static const char* kClitics[] = {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"};
    std::string tail;
    for (const char* c : kClitics) {
      std::string cl(c);
      if (w.size() > cl.size() && w.compare(w.size() - cl.size(), cl.size(), cl) == 0) {
        tail = cl;
        w.resize(w.size() - cl.size());
        break;
      }
    }
    // Leading / trailing quotes and dashes become their own tokens.
    while (!w.empty() && (w.front() == '\'' || w.front() == '`')) {
      out.push_back(w.front() == '`' ? "``" : "'");
      w.erase(w.begin());
    }
    std::string trailing;
    while (!w.empty() && w.back() == '\'') {
      trailing += "'";
      w.pop_back();
    }
    if (w == "-" || w == "--") {
      out.push_back(w);
      w.clear();
    }
    if (!w.empty()) out.push_back(w);
    if (!tail.empty()) out.push_back(tail);
    if (!trailing.empty()) out.push_back(trailing);
  }
  out.erase(std::remove_if(out.begin(), out.end(), [](const std::string& t) { return kDropped.count(t) > 0; }), out.end());
  return out;
}

BleuScores corpus_bleu(const std::vector<CaptionExample>& examples) {
  constexpr double kTiny = 1e-15, kSmall = 1e-9;
  double correct[4] = {0, 0, 0, 0}, guess[4] = {0, 0, 0, 0};
  double test_len = 0, ref_len = 0;
  for (const auto& ex : examples) {
    if (ex.references.empty()) throw std::invalid_argument("bleu: an example has no references");
    auto cand = ptb_tokenize(ex.candidate);
    const auto cand_counts = ngram_counts(cand, 4);
    Counts max_ref;
    const int len = static_cast<int>(cand.size());
    int best_len = -1;
    for (const auto& r : ex.references) {
      auto words = ptb_tokenize(r);
      for (const auto& [g, c] : ngram_counts(words, 4)) max_ref[g] = std::max(max_ref[g], c);
      const int rl = static_cast<int>(words.size());
      // "closest": the reference length nearest the candidate's, the shorter one on a tie.
      if (best_len < 0 || std::abs(rl - len) < std::abs(best_len - len) || (std::abs(rl - len) == std::abs(best_len - len) && rl < best_len))
        best_len = rl;
    }
    test_len += len;
    ref_len += best_len;
    for (int k = 0; k < 4; ++k) guess[k] += std::max(0, len - k);
    for (const auto& [g, c] : cand_counts) {
      auto it = max_ref.find(g);
      if (it != max_ref.end()) correct[g.size() - 1] += std::min(c, it->second);
    }
  }
  BleuScores out;
  double prod = 1.0;
  for (int k = 0; k < 4; ++k) {
    prod *= (correct[k] + kTiny) / (guess[k] + kSmall);
    out.bleu[k] = std::pow(prod, 1.0 / (k + 1));
  }
  const double ratio = (test_len + kTiny) / (ref_len + kSmall);
  if (ratio < 1)
    for (double& b : out.bleu) b *= std::exp(1 - 1 / ratio);
  return out;
}

double cider_d(const std::vector<CaptionExample>& examples, std::vector<double>* per_image) {
  constexpr int kN = 4;
  constexpr double kSigma = 6.0;
  if (examples.empty()) return 0;
  std::vector<std::vector<Counts>> refs(examples.size());
  std::vector<Counts> cands(examples.size());
  std::map<NGram, double> df;  // in how many images' reference sets an n-gram occurs
  for (size_t i = 0; i < examples.size(); ++i) {
    if (examples[i].references.empty()) throw std::invalid_argument("cider: an example has no references");
    cands[i] = ngram_counts(ptb_tokenize(examples[i].candidate), kN);
    std::set<NGram> seen;
    for (const auto& r : examples[i].references) {
      refs[i].push_back(ngram_counts(ptb_tokenize(r), kN));
      for (const auto& [g, c] : refs[i].back()) seen.insert(g);
    }
    for (const auto& g : seen) df[g] += 1;
  }
  const double log_n = std::log(static_cast<double>(examples.size()));
  struct Vec {
    std::map<NGram, double> w[kN];
    double norm[kN] = {0, 0, 0, 0};
    double length = 0;  // coco-caption counts bigrams here
  };
  auto to_vec = [&](const Counts& c) {
    Vec v;
    for (const auto& [g, tf] : c) {
      auto it = df.find(g);
      const double idf = log_n - std::log(std::max(1.0, it == df.end() ? 0.0 : it->second));
      const size_t n = g.size() - 1;
      v.w[n][g] = tf * idf;
      v.norm[n] += v.w[n][g] * v.w[n][g];
      if (n == 1) v.length += tf;
    }
    for (double& x : v.norm) x = std::sqrt(x);
    return v;
  };
  double total = 0;
  if (per_image) per_image->clear();
  for (size_t i = 0; i < examples.size(); ++i) {
    const Vec h = to_vec(cands[i]);
    double score[kN] = {0, 0, 0, 0};
    for (const auto& rc : refs[i]) {
      const Vec r = to_vec(rc);
      const double delta = h.length - r.length;
      for (int n = 0; n < kN; ++n) {
        double val = 0;
        for (const auto& [g, hw] : h.w[n]) {
          auto it = r.w[n].find(g);
          if (it != r.w[n].end()) val += std::min(hw, it->second) * it->second;
        }
        if (h.norm[n] != 0 && r.norm[n] != 0) val /= h.norm[n] * r.norm[n];
        score[n] += val * std::exp(-(delta * delta) / (2 * kSigma * kSigma));
      }
    }
    double mean = 0;
    for (double s : score) mean += s / kN;
    const double img = mean / static_cast<double>(refs[i].size()) * 10.0;
    if (per_image) per_image->push_back(img);
    total += img;
  }
  return total / static_cast<double>(examples.size());
}

}  // namespace vadapt::eval
