// Short-answer scorers; see answer_scoring.h.
#include "eval/answer_scoring.h"

#include <algorithm>
#include <cctype>
#include <regex>
#include <sstream>

namespace vadapt::eval {

std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string normalize_answer(const std::string& answer) {
  std::string s;
  for (char ch : answer) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (ch == '\n' || ch == '\t') s += ' ';
    else s += static_cast<char>(std::tolower(c));
  }
  // Punctuation: removed, except a period between digits ("3.5") and commas inside numbers.
  std::string p;
  for (size_t i = 0; i < s.size(); ++i) {
    char ch = s[i];
    bool digit_before = i > 0 && std::isdigit(static_cast<unsigned char>(s[i - 1]));
    bool digit_after = i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]));
    if ((ch == '.' || ch == ',') && digit_before && digit_after) { if (ch == '.') p += ch; continue; }
    if (std::ispunct(static_cast<unsigned char>(ch)) && ch != '\'') { p += ' '; continue; }
    p += ch;
  }
  static const std::map<std::string, std::string> kNumbers = {
      {"none", "0"}, {"zero", "0"}, {"one", "1"}, {"two", "2"}, {"three", "3"}, {"four", "4"}, {"five", "5"},
      {"six", "6"}, {"seven", "7"}, {"eight", "8"}, {"nine", "9"}, {"ten", "10"}};
  static const std::map<std::string, std::string> kContractions = {
      {"dont", "don't"}, {"doesnt", "doesn't"}, {"isnt", "isn't"}, {"arent", "aren't"}, {"cant", "can't"},
      {"wont", "won't"}, {"didnt", "didn't"}, {"wasnt", "wasn't"}, {"im", "i'm"}, {"ive", "i've"}, {"youre", "you're"},
      {"theyre", "they're"}, {"thats", "that's"}, {"whats", "what's"}, {"its", "it's"}};
  std::istringstream in(p);
  std::string w, out;
  while (in >> w) {
    if (w == "a" || w == "an" || w == "the") continue;
    if (auto it = kNumbers.find(w); it != kNumbers.end()) w = it->second;
    if (auto it = kContractions.find(w); it != kContractions.end()) w = it->second;
    out += (out.empty() ? "" : " ") + w;
  }
  return out;
}

bool exact_match(const std::string& prediction, const std::string& reference) {
  return normalize_answer(prediction) == normalize_answer(reference);
}

double vqa_accuracy(const std::string& prediction, const std::vector<std::string>& references) {
  if (references.empty()) return 0;
  const std::string p = normalize_answer(prediction);
  std::vector<std::string> refs;
  for (const auto& r : references) refs.push_back(normalize_answer(r));
  double total = 0;
  for (size_t leave = 0; leave < refs.size(); ++leave) {
    double matches = 0;
    for (size_t j = 0; j < refs.size(); ++j)
      if (j != leave && refs[j] == p) matches += 1;
    // With a single reference there is no other human: the answer counts fully when it matches.
    if (refs.size() == 1) matches = refs[0] == p ? 3 : 0;
    total += std::min(1.0, matches / 3.0);
  }
  return total / static_cast<double>(refs.size());
}

int parse_choice(const std::string& prediction, int num_choices) {
  const std::string t = strip(prediction);
  auto index_of = [&](char c) { return c >= 'A' && c < 'A' + num_choices ? c - 'A' : -1; };
  if (t.size() == 1) return index_of(t[0]);
  if (t.size() >= 3 && t[1] == '.' && t[2] == ' ') return index_of(t[0]);
  static const std::regex kPattern("The answer is ([A-Z]).");
  std::vector<std::string> found;
  for (std::sregex_iterator it(t.begin(), t.end(), kPattern), end; it != end; ++it) found.push_back((*it)[1]);
  if (found.size() == 1) return index_of(found[0][0]);
  return -1;
}

std::map<std::string, double> scienceqa_scores(const std::vector<ScienceQAItem>& items) {
  std::map<std::string, std::pair<double, double>> acc;  // category -> (correct, total)
  double unparsed = 0;
  for (const auto& it : items) {
    const double ok = it.predicted == it.answer ? 1 : 0;
    if (it.predicted < 0) unparsed += 1;
    std::vector<std::string> cats = {"average"};
    if (it.subject == "natural science") cats.push_back("NAT");
    if (it.subject == "social science") cats.push_back("SOC");
    if (it.subject == "language science") cats.push_back("LAN");
    if (it.has_text_context) cats.push_back("TXT");
    if (it.has_image) cats.push_back("IMG");
    if (!it.has_text_context && !it.has_image) cats.push_back("NO");
    if (it.grade.rfind("grade", 0) == 0) {
      int g = std::atoi(it.grade.c_str() + 5);
      if (g >= 1 && g <= 6) cats.push_back("G1-6");
      if (g >= 7 && g <= 12) cats.push_back("G7-12");
    }
    for (const auto& c : cats) {
      acc[c].first += ok;
      acc[c].second += 1;
    }
  }
  std::map<std::string, double> out;
  for (const auto& [c, v] : acc) out[c] = 100.0 * v.first / v.second;
  out["unparsed"] = unparsed;
  out["n"] = static_cast<double>(items.size());
  return out;
}

}  // namespace vadapt::eval
