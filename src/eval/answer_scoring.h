// Short-answer scorers:
//  - normalize_answer / exact_match: the VQA evaluation's answer normalisation (lower case,
//    punctuation, articles, number words -> digits, common contractions) then string equality;
//  - vqa_accuracy: the VQA v2 metric min(1, #humans that gave the answer / 3), averaged over the
//    ten leave-one-out subsets of the reference answers;
//  - ScienceQA multiple choice: the answer parser of LLaVA's ScienceQA evaluation (a bare
//    letter, "X. text", or "The answer is X.") and the accuracy breakdown the ScienceQA paper
//    reports (subject NAT / SOC / LAN, context TXT / IMG / NO, grades G1-6 / G7-12).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace vadapt::eval {

// Without leading / trailing whitespace.
std::string strip(const std::string& s);
std::string normalize_answer(const std::string& answer);
bool exact_match(const std::string& prediction, const std::string& reference);
double vqa_accuracy(const std::string& prediction, const std::vector<std::string>& references);

// Index of the chosen option (0 = A), or -1 when the prediction names no valid option.
int parse_choice(const std::string& prediction, int num_choices);

struct ScienceQAItem {
  int predicted = -1;  // parse_choice result
  int answer = 0;
  std::string subject;  // "natural science" | "social science" | "language science" | "" (unknown)
  std::string grade;    // "grade1".."grade12" | ""
  bool has_text_context = false;
  bool has_image = false;
};

// Accuracy (0..100) per category present, plus "average", "unparsed" (count) and "n".
std::map<std::string, double> scienceqa_scores(const std::vector<ScienceQAItem>& items);

}  // namespace vadapt::eval
