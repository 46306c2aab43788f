// Scorers against hand-worked values (derivations in the comments), not against themselves.
#include <gtest/gtest.h>

#include <cmath>

#include "eval/answer_scoring.h"
#include "eval/caption_metrics.h"

using namespace vadapt::eval;

TEST(PtbTokenize, LowercasesSplitsCliticsAndDropsPunctuation) {
  EXPECT_EQ(ptb_tokenize("A man's dog, running."), (std::vector<std::string>{"a", "man", "'s", "dog", "running"}));
  EXPECT_EQ(ptb_tokenize("It doesn't fit (really)!"), (std::vector<std::string>{"it", "does", "n't", "fit", "really"}));
  EXPECT_EQ(ptb_tokenize("  3.5 \"inch\" -- screen... "), (std::vector<std::string>{"3.5", "inch", "screen"}));
  EXPECT_TRUE(ptb_tokenize(" .,;: ").empty());
}

TEST(Bleu, HandWorkedSentence) {
  // cand "the cat sat on the mat" vs ref "the cat is on the mat", both 6 tokens (no brevity
  // penalty). Clipped matches: 1-grams the*2 cat on mat = 5/6; 2-grams "the cat" "on the"
  // "the mat" = 3/5; 3-grams "on the mat" = 1/4; 4-grams 0/3.
  auto s = corpus_bleu({{"The cat sat on the mat.", {"the cat is on the mat"}}});
  EXPECT_NEAR(s.bleu[0], 5.0 / 6.0, 1e-9);
  EXPECT_NEAR(s.bleu[1], std::sqrt(5.0 / 6.0 * 3.0 / 5.0), 1e-9);
  EXPECT_NEAR(s.bleu[2], 0.5, 1e-9);  // (5/6 * 3/5 * 1/4)^(1/3) = 0.125^(1/3)
  // 4-gram precision is (0 + 1e-15) / (3 + 1e-9): coco-caption's smoothing, not zero.
  EXPECT_NEAR(s.bleu[3], std::pow(0.125 * 1e-15 / 3.0, 0.25), 1e-9);
}

TEST(Bleu, BrevityPenaltyAndClosestReference) {
  // cand 2 tokens, ref 6: p1 = 1, BP = exp(1 - 6/2) = exp(-2).
  auto s = corpus_bleu({{"the cat", {"the cat sat on the mat"}}});
  EXPECT_NEAR(s.bleu[0], std::exp(-2.0), 1e-9);
  // refs of 3 and 7 tokens, cand 4: the closest is 3, so no penalty; p1 = 3/4 (a b c match).
  auto t = corpus_bleu({{"a b c d", {"a b c", "a b c x y z w"}}});
  EXPECT_NEAR(t.bleu[0], 0.75, 1e-9);
  // Clipping: "the the the" against "the cat" counts "the" once: p1 = 1/3; BP uses ref 2 < 3.
  auto u = corpus_bleu({{"the the the", {"the cat"}}});
  EXPECT_NEAR(u.bleu[0], 1.0 / 3.0, 1e-9);
}

TEST(Bleu, CorpusLevelSumsCountsBeforeDividing) {
  // Image 1: "a b" vs "a b" (2/2); image 2: "c d e f" vs "c x y z" (1/4). Corpus p1 = 3/6, not
  // the mean of 1 and 1/4; lengths 6 vs 6, no penalty.
  auto s = corpus_bleu({{"a b", {"a b"}}, {"c d e f", {"c x y z"}}});
  EXPECT_NEAR(s.bleu[0], 0.5, 1e-9);
}

TEST(CiderD, IdenticalPairsScoreFive) {
  // Two images, refs "a cat" / "a dog", candidates identical to them. IDF with N = 2 images:
  // "a" occurs in both reference sets -> weight log2 - log2 = 0; "cat", "a cat" -> log 2.
  // Unigram cosine = bigram cosine = 1; no 3/4-grams -> 0. Length delta 0.
  // Score = mean(1, 1, 0, 0) * 10 = 5.
  std::vector<double> per;
  double c = cider_d({{"a cat", {"a cat"}}, {"a dog", {"a dog"}}}, &per);
  EXPECT_NEAR(c, 5.0, 1e-9);
  EXPECT_NEAR(per[0], 5.0, 1e-9);
}

TEST(CiderD, LengthPenaltyAndPartialMatch) {
  // Image 1: cand "a cat", ref "a cat sat"; image 2: "a dog" / "a dog". L = log 2.
  // Cand 1 vectors: uni {a: 0, cat: L}, bi {a cat: L}; ref 1: uni {a: 0, cat: L, sat: L}
  // (norm sqrt2 L), bi {a cat: L, cat sat: L} (norm sqrt2 L), tri {a cat sat: L}.
  // Cosines: uni L*L / (L * sqrt2 L) = 1/sqrt2, bi the same, tri 0 (cand has none), 4: 0.
  // Lengths (bigram counts, as coco-caption): 1 vs 2 -> penalty exp(-1 / 72).
  // Image 1 = (2 / sqrt2) / 4 * exp(-1/72) * 10; image 2 = 5 (as above).
  std::vector<double> per;
  double c = cider_d({{"a cat", {"a cat sat"}}, {"a dog", {"a dog"}}}, &per);
  const double img1 = std::sqrt(2.0) / 4.0 * std::exp(-1.0 / 72.0) * 10.0;
  EXPECT_NEAR(per[0], img1, 1e-9);
  EXPECT_NEAR(c, (img1 + 5.0) / 2.0, 1e-9);
}

TEST(CiderD, AveragesOverReferencesAndClipsRepeats) {
  // One image with two refs "a b" and "c d"; N = 1 so every IDF = log 1 - log 1 = 0 and all
  // weights vanish: the score is 0 whatever the candidate (CIDEr needs a corpus).
  EXPECT_NEAR(cider_d({{"a b", {"a b", "c d"}}}), 0.0, 1e-12);
  // Three images; refs "x y", "x z", "w v". cand for image 1 "x y y": the repeated "y" is
  // clipped to the reference weight. IDF: x in 2 of 3 sets -> log3 - log2; y, z, w, v, and
  // every bigram -> log 3. Cand uni {x: a, y: 2b} with a = log1.5, b = log3; ref uni {x: a,
  // y: b}. Clipped dot = a*a + min(2b, b)*b = a^2 + b^2; norms sqrt(a^2 + 4b^2), sqrt(a^2 + b^2).
  // Bigrams: cand {x y: b, y y: b}, ref {x y: b}: dot b^2, norms sqrt2 b, b -> 1/sqrt2.
  // Lengths 2 vs 1 bigram: exp(-1/72). Image 1 = (uni + bi) / 4 * exp(-1/72) * 10.
  std::vector<double> per;
  cider_d({{"x y y", {"x y"}}, {"x z", {"x z"}}, {"w v", {"w v"}}}, &per);
  const double a = std::log(1.5), b = std::log(3.0);
  const double uni = (a * a + b * b) / (std::sqrt(a * a + 4 * b * b) * std::sqrt(a * a + b * b));
  const double bi = 1.0 / std::sqrt(2.0);
  EXPECT_NEAR(per[0], (uni + bi) / 4.0 * std::exp(-1.0 / 72.0) * 10.0, 1e-9);
}

TEST(AnswerScoring, NormalisationAndExactMatch) {
  EXPECT_EQ(normalize_answer("  The Red!  "), "red");
  EXPECT_EQ(normalize_answer("Two"), "2");
  EXPECT_EQ(normalize_answer("top-left"), "top left");
  EXPECT_EQ(normalize_answer("3.5 inches"), "3.5 inches");
  EXPECT_EQ(normalize_answer("dont"), "don't");
  EXPECT_TRUE(exact_match("A circle.", "circle"));
  EXPECT_TRUE(exact_match("three", "3"));
  EXPECT_FALSE(exact_match("red circle", "red"));
}

TEST(AnswerScoring, VqaAccuracyLeaveOneOut) {
  // 10 human answers, 2 say "red". Leaving out one of the 8 "blue" keeps both "red" (2/3);
  // leaving out a "red" keeps one (1/3): (8 * 2/3 + 2 * 1/3) / 10 = 0.6.
  std::vector<std::string> refs = {"red", "red", "blue", "blue", "blue", "blue", "blue", "blue", "blue", "blue"};
  EXPECT_NEAR(vqa_accuracy("Red", refs), 0.6, 1e-12);
  // 4 of 10 "blue" -> every subset has >= 3 -> 1.0.
  std::vector<std::string> four = {"blue", "blue", "blue", "blue", "x", "x", "x", "x", "x", "x"};
  EXPECT_NEAR(vqa_accuracy("blue", four), 1.0, 1e-12);
  EXPECT_NEAR(vqa_accuracy("green", refs), 0.0, 1e-12);
  EXPECT_NEAR(vqa_accuracy("red", {"red"}), 1.0, 1e-12);
}

TEST(ScienceQA, AnswerParsing) {
  EXPECT_EQ(parse_choice("B", 2), 1);
  EXPECT_EQ(parse_choice(" C. Rhode Island", 4), 2);
  EXPECT_EQ(parse_choice("Because of the lecture... The answer is D.", 4), 3);
  EXPECT_EQ(parse_choice("The answer is E.", 4), -1);  // not an option here
  EXPECT_EQ(parse_choice("The answer is A. The answer is B.", 4), -1);  // ambiguous
  EXPECT_EQ(parse_choice("maybe", 4), -1);
}

TEST(ScienceQA, CategoryBreakdown) {
  std::vector<ScienceQAItem> items = {
      {0, 0, "natural science", "grade3", false, true},   // IMG, G1-6, correct
      {1, 0, "natural science", "grade8", true, false},   // TXT, G7-12, wrong
      {-1, 1, "social science", "grade5", false, false},  // NO, unparsed
      {2, 2, "language science", "grade11", true, true},  // TXT + IMG, correct
  };
  auto s = scienceqa_scores(items);
  EXPECT_DOUBLE_EQ(s["average"], 50.0);
  EXPECT_DOUBLE_EQ(s["NAT"], 50.0);
  EXPECT_DOUBLE_EQ(s["SOC"], 0.0);
  EXPECT_DOUBLE_EQ(s["LAN"], 100.0);
  EXPECT_DOUBLE_EQ(s["TXT"], 50.0);
  EXPECT_DOUBLE_EQ(s["IMG"], 100.0);
  EXPECT_DOUBLE_EQ(s["NO"], 0.0);
  EXPECT_DOUBLE_EQ(s["G1-6"], 50.0);
  EXPECT_DOUBLE_EQ(s["G7-12"], 50.0);
  EXPECT_DOUBLE_EQ(s["unparsed"], 1.0);
}
